// Logging for atx-applier: spdlog, one logfmt-ish line per event, UTC timestamps.
//
//   2026-11-21T08:42:42.123456Z level=info db=postgres event=batch_applied count=12 first_lsn=0/16B3F08 ...
//
// Lines go to --log-file (appended; reopened on SIGHUP so that logrotate can move it) or stderr.
#pragma once

#include <string>
#include <string_view>

#include <spdlog/spdlog.h>

namespace atx::applier {

// Parses "trace|debug|info|warning|warn|error|critical|off"; throws std::invalid_argument.
spdlog::level::level_enum parse_log_level(const std::string& name);

// Installs the default logger. Throws std::runtime_error if the file cannot be opened.
void init_logging(const std::string& log_file, spdlog::level::level_enum level);
// Reopens the log file (no-op for stderr). Errors are reported on stderr, logging goes on.
void reopen_log();
void set_log_level(spdlog::level::level_enum level);
void shutdown_logging();

// Quotes a value for a logfmt field when it needs it (empty, or a space, quote, '=', backslash,
// control byte, a byte that is not UTF-8, or a code point below). Inside quotes: \" \\ \n \r \t,
// other control bytes (and DEL) and bytes that are not UTF-8 as \xNN; C1 controls (NEL among them),
// U+2028, U+2029 and the bidirectional controls as \uXXXX; other UTF-8 as it is. So a value can
// neither end its line (for a reader that knows Unicode's line breaks too) nor start a field.
std::string logq(std::string_view v);

}  // namespace atx::applier
