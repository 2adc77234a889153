// SQLSTATE classification and backoff; the table is in retry_policy.h and docs/applier-state.md.
#include "retry_policy.h"

#include <algorithm>
#include <random>

namespace atx::applier {

namespace {

bool well_formed(std::string_view s)
{
    if (s.size() != 5)
        return false;
    for (char c : s)
        if (!((c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z')))
            return false;
    return true;
}

}  // namespace

ErrorClass classify_sqlstate(std::string_view s)
{
    if (!well_formed(s))
        return ErrorClass::Permanent;
    const std::string_view cls = s.substr(0, 2);
    // Whole classes: connection exceptions and insufficient resources.
    if (cls == "08" || cls == "53")
        return ErrorClass::Transient;
    static constexpr std::string_view kTransient[] = {
        "40001",  // serialization_failure
        "40P01",  // deadlock_detected
        "55P03",  // lock_not_available
        "55006",  // object_in_use
        "57014",  // query_canceled (statement_timeout); the retry budget bounds it
        "25P03",  // idle_in_transaction_session_timeout
        "57P05",  // idle_session_timeout
        "57P01",  // admin_shutdown
        "57P02",  // crash_shutdown
        "57P03",  // cannot_connect_now
        "58000",  // system_error
        "58030",  // io_error
    };
    for (std::string_view t : kTransient)
        if (s == t)
            return ErrorClass::Transient;
    return ErrorClass::Permanent;
}

const char* to_string(ErrorClass c)
{
    switch (c) {
    case ErrorClass::Transient: return "transient";
    case ErrorClass::Permanent: return "permanent";
    }
    return "unknown";
}

std::chrono::milliseconds RetryPolicy::backoff(uint32_t attempt) const
{
    using ms = std::chrono::milliseconds;
    const int64_t b = std::max<int64_t>(base.count(), 0);
    const int64_t c = std::max<int64_t>(cap.count(), 0);
    if (b == 0 || c == 0)
        return ms(0);
    const uint32_t n = attempt == 0 ? 0 : attempt - 1;
    int64_t ceiling = b;
    for (uint32_t i = 0; i < n && ceiling < c; ++i)
        ceiling *= 2;  // stops at the first value >= cap: no overflow
    ceiling = std::min(ceiling, c);

    thread_local std::mt19937_64 rng{std::random_device{}()};
    std::uniform_int_distribution<int64_t> dist(ceiling / 2, ceiling);
    return ms(dist(rng));
}

}  // namespace atx::applier
