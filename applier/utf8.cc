// See utf8.h.
#include "utf8.h"

namespace atx::applier {

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
    if ((n == 3 && v < 0x800) || (n == 4 && (v < 0x10000 || v > 0x10FFFF)) || (v >= 0xD800 && v <= 0xDFFF))
        return 0;
    *cp = v;
    return n;
}

bool display_control(uint32_t cp)
{
    return (cp >= 0x80 && cp <= 0x9F) ||                                        // C1 controls
           cp == 0x2028 || cp == 0x2029 ||                                      // line/paragraph separator
           (cp >= 0x202A && cp <= 0x202E) || (cp >= 0x2066 && cp <= 0x2069) ||  // bidi embed/override/isolate
           cp == 0x200E || cp == 0x200F || cp == 0x061C ||                      // bidi marks
           cp == 0xFEFF;                                                        // byte order mark
}

}  // namespace atx::applier
