// Printing text that users control (statements, error messages, keys, role and database names)
// on an operator's terminal.
//
// A dead letter's error or statement is written by whoever called atx_log: raw, it could clear
// the screen or move the cursor (escape sequences), fake further lines of output (newlines,
// carriage returns), or hide text (bidirectional overrides). Human output therefore shows such
// characters escaped and bounds each field; --json output carries the complete text (JSON escapes
// control characters itself).
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace atx::applier::cli {

// `s` with every control character (C0, DEL, C1), line or paragraph separator and bidirectional
// control escaped (\n, \r, \t, \x1b, \u009b, \u202e), invalid UTF-8 bytes as \xNN, and cut after
// at most `max_bytes` bytes of output on a character boundary, then marked with
// "… (N more bytes)". Nothing else changes (backslashes stay as they are).
std::string printable(std::string_view s, size_t max_bytes = 2000);

}  // namespace atx::applier::cli
