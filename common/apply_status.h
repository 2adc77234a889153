// What atx.apply_batch answers for each message, and what the applier does with it. The server
// writes these names (ext/), the applier parses them (applier/): one list for both.
//
// Pure C++ (no postgres.h).
#pragma once

#include <cstring>
#include <optional>
#include <string_view>

namespace atx {

enum class ApplyStatus {
    Applied,    // executed
    Duplicate,  // its role applied its idempotency key before; not executed
    Already,    // handled before (atx.applied, or below the horizon); not executed
    Dead,       // dead-lettered now
    Retry,      // failed transiently (raised by the server); nothing kept; the batch stops here
    Nonatomic,  // needs a top-level statement (COMMIT inside, VACUUM ...); the batch stops here
    Skipped,    // after a retry / nonatomic / rejected in the same batch
    Rejected,   // not a pg_atx record at that LSN, or a newer format; nothing recorded
};

inline constexpr const char* kApplyStatusNames[] = {"applied", "duplicate", "already", "dead",
                                                    "retry",   "nonatomic", "skipped", "rejected"};

inline const char* apply_status_name(ApplyStatus s) { return kApplyStatusNames[static_cast<int>(s)]; }

inline std::optional<ApplyStatus> parse_apply_status(std::string_view s)
{
    for (size_t i = 0; i < sizeof kApplyStatusNames / sizeof kApplyStatusNames[0]; ++i)
        if (s == kApplyStatusNames[i])
            return static_cast<ApplyStatus>(i);
    return std::nullopt;
}

// The applier's own verdicts on a message it will not run (atx.dead_letter_message): each has a
// fixed SQLSTATE and text, written by the server, so that what an atx_exec caller is told never
// comes from the applier role's free text.
enum class Verdict {
    Timeout,      // ran past its limit and did not stop when cancelled: its backend was terminated
    BackendLost,  // its apply backend was lost while it ran, --max-backend-losses times
    InDoubt,      // a non-atomic run was interrupted: it may have committed part of its work
    Operator,     // an operator dead-lettered it (atx-applier dead-letter)
};

inline constexpr const char* kVerdictNames[] = {"timeout", "backend_lost", "in_doubt", "operator"};

inline const char* verdict_name(Verdict v) { return kVerdictNames[static_cast<int>(v)]; }

inline std::optional<Verdict> parse_verdict(std::string_view s)
{
    for (size_t i = 0; i < sizeof kVerdictNames / sizeof kVerdictNames[0]; ++i)
        if (s == kVerdictNames[i])
            return static_cast<Verdict>(i);
    return std::nullopt;
}

}  // namespace atx
