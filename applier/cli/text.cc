// See text.h.
#include "text.h"

#include <cstdint>
#include <cstdio>

#include "utf8.h"

namespace atx::applier::cli {

namespace {

bool needs_escape(uint32_t cp) { return cp < 0x20 || cp == 0x7F || display_control(cp); }

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
