// UTF-8 as text that users control arrives in logs and on terminals: what a reader would take as
// a line break or as text running the other way must be shown escaped (logging.cc, cli/text.cc).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace atx::applier {

// Length of the valid UTF-8 sequence at s[i] and its code point; 0 when there is none (overlong
// forms, surrogates and values above U+10FFFF are not valid).
size_t utf8_char(std::string_view s, size_t i, uint32_t* cp);

// C1 controls (NEL among them), the line and paragraph separators, the bidirectional controls
// and the byte order mark: code points to show escaped (C0 controls and DEL are the caller's).
bool display_control(uint32_t cp);

}  // namespace atx::applier
