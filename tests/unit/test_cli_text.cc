// cli::printable: user text on an operator's terminal cannot carry escape sequences, forge lines
// or hide text, and is bounded.
#include <catch2/catch.hpp>

#include <string>

#include "cli/text.h"

using atx::applier::cli::printable;

TEST_CASE("control characters are escaped", "[cli]")
{
    CHECK(printable("INSERT INTO t VALUES (1)") == "INSERT INTO t VALUES (1)");
    CHECK(printable("a\nb\r\tc") == "a\\nb\\r\\tc");
    CHECK(printable("\x1b[2J\x1b]0;title\x07") == "\\x1b[2J\\x1b]0;title\\x07");
    CHECK(printable(std::string("nul\0x", 5)) == "nul\\x00x");
    CHECK(printable("del\x7f") == "del\\x7f");
    CHECK(printable("csi \xc2\x9b"
                    "31m") == "csi \\u009b31m");  // C1 CSI, UTF-8 encoded
    CHECK(printable("ab\xe2\x80\xae"
                    "cd") == "ab\\u202ecd");                      // right-to-left override
    CHECK(printable("x\xe2\x81\xa6y") == "x\\u2066y");            // left-to-right isolate
    CHECK(printable("line\xe2\x80\xa8sep") == "line\\u2028sep");  // line separator
    CHECK(printable("back\\slash 'q' \"dq\"") == "back\\slash 'q' \"dq\"");
}

TEST_CASE("valid UTF-8 is kept, invalid bytes are escaped", "[cli]")
{
    CHECK(printable("caf\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x98\x80") ==
          "caf\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x98\x80");
    CHECK(printable("a\xff"
                    "b") == "a\\xffb");
    CHECK(printable("\xc3") == "\\xc3");                    // truncated sequence
    CHECK(printable("\xc0\xaf") == "\\xc0\\xaf");           // overlong '/'
    CHECK(printable("\xed\xa0\x80") == "\\xed\\xa0\\x80");  // surrogate
    CHECK(printable("\xe0\x80\xaf") == "\\xe0\\x80\\xaf");  // overlong 3-byte form
}

TEST_CASE("output is bounded on a character boundary", "[cli]")
{
    const std::string long_text(5000, 'x');
    const std::string p = printable(long_text, 100);
    CHECK(p == std::string(100, 'x') + "… (4900 more bytes)");
    CHECK(printable("abc", 3) == "abc");
    CHECK(printable("abcd", 3) == "abc… (1 more bytes)");
    // A two-byte character that would straddle the bound is not cut in half.
    CHECK(printable("ab\xc3\xa9", 3) == "ab… (2 more bytes)");
    // An escape counts with its printed length.
    CHECK(printable("a\nb", 2) == "a… (2 more bytes)");
    CHECK(printable("", 0).empty());
}
