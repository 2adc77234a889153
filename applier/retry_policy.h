// Which apply failures are worth retrying, and how long to wait between attempts.
//
// A failure reported by atx.apply_message (or by the connection) is classified by its SQLSTATE.
// Transient failures are retried with capped exponential backoff; permanent ones, and transient
// ones whose retry budget is spent, are dead-lettered. The table (also in docs/applier-state.md):
//
//   SQLSTATE            name                                   class      why
//   40001               serialization_failure                  transient  retry of the same txn succeeds
//   40P01               deadlock_detected                      transient  the other side won; retry
//   55P03               lock_not_available (lock_timeout)      transient  the lock holder will finish
//   55006               object_in_use                          transient  e.g. concurrent DDL / DROP
//   57014               query_canceled (statement_timeout)     transient  bounded by the retry budget,
//                                                                         then dead-lettered
//   25P03               idle_in_transaction_session_timeout    transient  our session was killed
//   57P05               idle_session_timeout                   transient  our session was killed
//   08xxx               connection_exception (whole class)     transient  reconnect and retry
//   57P01 57P02 57P03   admin_shutdown, crash_shutdown,        transient  server restarting
//                       cannot_connect_now
//   53xxx               insufficient_resources (whole class:   transient  disk / memory / slots
//                       53000, 53100 disk_full, 53200                     may free up
//                       out_of_memory, 53300 too_many_connections)
//   58000 58030         system_error, io_error                 transient  OS-level, often passing
//   everything else                                            permanent  the same statement will fail
//     (e.g. 42xxx syntax / undefined object, 42501 privilege, 23xxx constraint, 22xxx data,
//      22P03 malformed payload, 28000 HMAC mismatch, 0A000 unknown version, 42704 role gone,
//      2BP01, 57P04 database_dropped, 58P01/58P02, XX000 internal_error, XX001/XX002 corruption)
//   empty or malformed (not 5 characters of [0-9A-Z])               permanent
#pragma once

#include <chrono>
#include <cstdint>
#include <string_view>

namespace atx::applier {

enum class ErrorClass { Transient, Permanent };

ErrorClass classify_sqlstate(std::string_view sqlstate);
const char* to_string(ErrorClass c);

struct RetryPolicy {
    uint32_t max_attempts = 8;  // attempts in total, the first one included
    std::chrono::milliseconds base{100};
    std::chrono::milliseconds cap{30000};

    // Delay before the next attempt after `attempt` failed attempts (attempt >= 1; 0 counts as 1):
    // ceiling = min(cap, base * 2^(attempt-1)), result uniformly random in [ceiling/2, ceiling].
    std::chrono::milliseconds backoff(uint32_t attempt) const;
    // True when `attempts` attempts have been made and no more are allowed.
    bool exhausted(uint32_t attempts) const { return attempts >= max_attempts; }
};

}  // namespace atx::applier
