// SQLSTATE classification (the table in applier/retry_policy.h) and the backoff schedule.
#include <catch2/catch.hpp>

#include <algorithm>
#include <set>
#include <string>

#include "retry_policy.h"

using namespace atx::applier;
using std::chrono::milliseconds;

TEST_CASE("transient SQLSTATEs", "[retry]")
{
    auto s = GENERATE(as<std::string>{},
                      "40001",                                               // serialization_failure
                      "40P01",                                               // deadlock_detected
                      "55P03",                                               // lock_not_available
                      "55006",                                               // object_in_use
                      "57014",                                               // query_canceled (statement timeout)
                      "25P03",                                               // idle_in_transaction_session_timeout
                      "57P05",                                               // idle_session_timeout
                      "08000", "08003", "08006", "08001", "08004", "08P01",  // connection exceptions
                      "57P01", "57P02", "57P03",                             // shutdown / cannot connect now
                      "53000", "53100", "53200", "53300", "53400",           // insufficient resources
                      "58000", "58030");                                     // system / io error
    INFO(s);
    CHECK(classify_sqlstate(s) == ErrorClass::Transient);
}

TEST_CASE("permanent SQLSTATEs", "[retry]")
{
    auto s = GENERATE(as<std::string>{}, "42601", "42P01", "42703",
                      "42883",                             // syntax error, undefined table/column/function
                      "42501",                             // insufficient_privilege
                      "42704",                             // undefined_object (caller role gone)
                      "23505", "23503", "23502", "23514",  // constraint violations
                      "22012", "22P02", "22001", "22P03",  // data exceptions, malformed payload
                      "22023",                             // message for another database
                      "28000",                             // HMAC mismatch
                      "0A000",                             // unknown format version
                      "2BP01",                             // dependent objects still exist
                      "40000", "40002", "40003",           // other class-40 codes
                      "55000", "57P04", "58P01", "58P02",  // neighbours of transient codes
                      "XX000", "XX001", "XX002",           // internal error, corruption
                      "P0001",                             // raise_exception
                      "00000", "01000");                   // not even errors
    INFO(s);
    CHECK(classify_sqlstate(s) == ErrorClass::Permanent);
}

TEST_CASE("empty or malformed SQLSTATEs are permanent", "[retry]")
{
    auto s = GENERATE(as<std::string>{}, "", "4000", "400011", "40p01", "08 00", "53-00",
                      std::string("08\0"
                                  "00",
                                  5),
                      "  \t  ");
    INFO(s);
    CHECK(classify_sqlstate(s) == ErrorClass::Permanent);
}

TEST_CASE("error class names", "[retry]")
{
    CHECK(std::string(to_string(ErrorClass::Transient)) == "transient");
    CHECK(std::string(to_string(ErrorClass::Permanent)) == "permanent");
}

TEST_CASE("backoff is capped exponential with jitter in [50%, 100%]", "[retry]")
{
    RetryPolicy p;  // base 100 ms, cap 30 s
    for (int round = 0; round < 200; ++round) {
        int64_t ceiling = 100;
        for (uint32_t attempt = 1; attempt <= 40; ++attempt) {
            const int64_t d = p.backoff(attempt).count();
            INFO("attempt " << attempt << " delay " << d << " ceiling " << ceiling);
            REQUIRE(d >= ceiling / 2);
            REQUIRE(d <= ceiling);
            REQUIRE(d <= 30000);
            ceiling = std::min<int64_t>(ceiling * 2, 30000);
        }
    }
    // Attempt 0 behaves like attempt 1; huge attempt numbers neither overflow nor pass the cap.
    CHECK(p.backoff(0).count() <= 100);
    CHECK(p.backoff(0).count() >= 50);
    CHECK(p.backoff(UINT32_MAX).count() >= 15000);
    CHECK(p.backoff(UINT32_MAX).count() <= 30000);
}

TEST_CASE("backoff grows: the lower bound of attempt n+1 is the upper bound of attempt n", "[retry]")
{
    RetryPolicy p;
    p.base = milliseconds(10);
    p.cap = milliseconds(5000);
    // Monotone-ish: a later attempt never waits less than half of an earlier one's ceiling,
    // and once the cap is reached the delay stays in [cap/2, cap].
    for (int round = 0; round < 100; ++round) {
        for (uint32_t a = 1; a < 20; ++a)
            REQUIRE(p.backoff(a + 1).count() * 2 >= p.backoff(a).count());
        for (uint32_t a = 10; a < 30; ++a) {
            REQUIRE(p.backoff(a).count() >= 2500);
            REQUIRE(p.backoff(a).count() <= 5000);
        }
    }
}

TEST_CASE("backoff jitters", "[retry]")
{
    RetryPolicy p;
    std::set<int64_t> seen;
    for (int i = 0; i < 50; ++i)
        seen.insert(p.backoff(10).count());
    CHECK(seen.size() > 1);
}

TEST_CASE("degenerate policies do not misbehave", "[retry]")
{
    RetryPolicy zero;
    zero.base = milliseconds(0);
    CHECK(zero.backoff(5).count() == 0);
    RetryPolicy small_cap;
    small_cap.base = milliseconds(1000);
    small_cap.cap = milliseconds(300);
    for (uint32_t a = 1; a < 5; ++a) {
        CHECK(small_cap.backoff(a).count() <= 300);
        CHECK(small_cap.backoff(a).count() >= 150);
    }
}

TEST_CASE("exhausted counts every attempt, the first included", "[retry]")
{
    RetryPolicy p;
    CHECK_FALSE(p.exhausted(0));
    CHECK_FALSE(p.exhausted(7));
    CHECK(p.exhausted(8));
    CHECK(p.exhausted(9));
    p.max_attempts = 1;
    CHECK_FALSE(p.exhausted(0));
    CHECK(p.exhausted(1));
}
