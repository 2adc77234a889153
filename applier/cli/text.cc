// See text.h.
#include "text.h"

#include <cstdint>
#include <cstdio>

namespace atx::applier::cli {

namespace {

// Length of the UTF-8 sequence at s[i] and its code point; 0 when it is not valid UTF-8.
size_t utf8_char(std::string_view s, size_t i, uint32_t* cp)
{
    const auto b = [&](size_t k) { return static_cast<unsigned char>(s[i + k]); };
    const unsigned char c = b(0);
    size_t n;
    uint32_t v;
    if (c < 0x80)
        return *cp = c, 1;
    if (c >= 0xC2 && c <= 0xDF)
        n = 2, v = c & 0x1F;
    else if (c >= 0xE0 && c <= 0xEF)
        n = 3, v = c & 0x0F;
    else if (c >= 0xF0 && c <= 0xF4)
        n = 4, v = c & 0x07;
    else
        return 0;
    if (i + n > s.size())
        return 0;
    for (size_t k = 1; k < n; ++k) {
        if ((b(k) & 0xC0) != 0x80)
            return 0;
        v = (v << 6) | (b(k) & 0x3F);
    }
    // Overlong forms, surrogates and values above U+10FFFF are not valid UTF-8.
    if ((n == 3 && v < 0x800) || (n == 4 && (v < 0x10000 || v > 0x10FFFF)) || (v >= 0xD800 && v <= 0xDFFF))
        return 0;
    *cp = v;
    return n;
}

bool needs_escape(uint32_t cp)
{
    return cp < 0x20 || cp == 0x7F || (cp >= 0x80 && cp <= 0x9F) ||  // C0, DEL, C1 controls
           cp == 0x2028 || cp == 0x2029 ||                            // line/paragraph separator
           (cp >= 0x202A && cp <= 0x202E) || (cp >= 0x2066 && cp <= 0x2069) ||  // bidi embed/override/isolate
           cp == 0x200E || cp == 0x200F || cp == 0x061C;                       // bidi marks
}

std::string escape(uint32_t cp)
{
    switch (cp) {
    case '\n': return "\\n";
    case '\r': return "\\r";
    case '\t': return "\\t";
    default: break;
    }
    char b[12];
    if (cp < 0x80)
        std::snprintf(b, sizeof b, "\\x%02x", static_cast<unsigned>(cp));
    else
        std::snprintf(b, sizeof b, "\\u%04x", static_cast<unsigned>(cp));
    return b;
}

}  // namespace

std::string printable(std::string_view s, size_t max_bytes)
{
    std::string out;
    size_t i = 0;
    while (i < s.size()) {
        uint32_t cp = 0;
        const size_t n = utf8_char(s, i, &cp);
        std::string piece;
        if (n == 0) {
            char b[8];
            std::snprintf(b, sizeof b, "\\x%02x", static_cast<unsigned>(static_cast<unsigned char>(s[i])));
            piece = b;
        } else if (needs_escape(cp)) {
            piece = escape(cp);
        } else {
            piece.assign(s.substr(i, n));
        }
        if (out.size() + piece.size() > max_bytes)
            return out + "… (" + std::to_string(s.size() - i) + " more bytes)";
        out += piece;
        i += n == 0 ? 1 : n;
    }
    return out;
}

}  // namespace atx::applier::cli
