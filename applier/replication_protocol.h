// The client side of PostgreSQL's streaming replication sub-protocol (CopyBoth data).
//
// Pure functions over byte spans: no libpq, no I/O. Parsing uses atx::ByteReader, so every
// overrun throws atx::DecodeError; an unknown message type throws too.
//
//   'w' XLogData:          Int64 dataStart, Int64 walEnd, Int64 sendTime, Byte* payload
//   'k' primary keepalive: Int64 walEnd, Int64 sendTime, Byte1 replyRequested
//   'r' standby status:    Int64 write, Int64 flush, Int64 apply, Int64 sendTime, Byte1 replyRequested
//
// Times are PostgreSQL TimestampTz: microseconds since 2000-01-01 00:00:00 UTC.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <variant>

namespace atx::applier {

using Lsn = uint64_t;

struct XLogData {
    Lsn data_start = 0;  // for pg_atx: the message LSN (end of its WAL record)
    Lsn wal_end = 0;
    int64_t send_time = 0;
    std::string_view payload;  // points into the parsed buffer
};

struct Keepalive {
    Lsn wal_end = 0;
    int64_t send_time = 0;
    bool reply_requested = false;
};

using CopyMessage = std::variant<XLogData, Keepalive>;

// Parses one CopyData message received from a walsender. Throws atx::DecodeError when it is
// empty, truncated, has trailing bytes (keepalive) or an unknown type byte.
CopyMessage parse_copy_data(std::string_view data);

// Builds the 'r' standby status update.
std::string build_status_update(Lsn write, Lsn flush, Lsn apply, int64_t send_time, bool reply_requested);

// "X/X" as PostgreSQL prints pg_lsn (upper-case hex, no padding).
std::string format_lsn(Lsn lsn);
// Parses "X/X" (1-8 hex digits each side); nullopt when malformed.
std::optional<Lsn> parse_lsn(std::string_view text);

// Now as PostgreSQL TimestampTz.
int64_t pg_now();
// PostgreSQL TimestampTz <-> unix microseconds.
inline constexpr int64_t kPgEpochOffsetUs = 946684800LL * 1000000LL;
inline int64_t pg_to_unix_us(int64_t pg) { return pg + kPgEpochOffsetUs; }
inline int64_t unix_to_pg_us(int64_t unix_us) { return unix_us - kPgEpochOffsetUs; }
int64_t unix_now_us();

}  // namespace atx::applier
