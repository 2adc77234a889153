// logq (logfmt quoting of values) and the log lines it ends up in: whatever bytes a value holds
// (they come from the server, from payloads, from error texts), it stays one field on one line.
#include <catch2/catch.hpp>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <unistd.h>

#include "logging.h"

using namespace atx::applier;
using namespace std::string_literals;

namespace {

// Parses one logfmt line "TIMESTAMP k=v k="quoted \"v\"" ..." into its fields; the timestamp is
// the first token, without '='. Quoted values are unescaped (\" \\ \n \r \t \xNN \uXXXX). Returns
// false on anything else, and on a raw byte a Unicode-aware reader takes as a line break (NEL,
// U+2028, U+2029).
bool parse_logfmt(const std::string& line, std::vector<std::pair<std::string, std::string>>* fields)
{
    size_t i = line.find(' ');
    if (i == std::string::npos)
        return false;
    ++i;
    while (i < line.size()) {
        const size_t eq = line.find('=', i);
        if (eq == std::string::npos || eq == i)
            return false;
        const std::string key = line.substr(i, eq - i);
        if (key.find_first_of(" \"") != std::string::npos)
            return false;
        i = eq + 1;
        std::string value;
        if (i < line.size() && line[i] == '"') {
            ++i;
            bool closed = false;
            while (i < line.size()) {
                const char c = line[i++];
                if (c == '"') {
                    closed = true;
                    break;
                }
                if (c != '\\') {
                    if (line.compare(i - 1, 2, "\xc2\x85") == 0 || line.compare(i - 1, 3, "\xe2\x80\xa8") == 0 ||
                        line.compare(i - 1, 3, "\xe2\x80\xa9") == 0)
                        return false;
                    value += c;
                    continue;
                }
                if (i >= line.size())
                    return false;
                const char e = line[i++];
                if (e == '"' || e == '\\')
                    value += e;
                else if (e == 'n')
                    value += '\n';
                else if (e == 'r')
                    value += '\r';
                else if (e == 't')
                    value += '\t';
                else if (e == 'x' && i + 2 <= line.size()) {
                    value += static_cast<char>(std::stoi(line.substr(i, 2), nullptr, 16));
                    i += 2;
                } else if (e == 'u' && i + 4 <= line.size()) {
                    const unsigned cp = static_cast<unsigned>(std::stoi(line.substr(i, 4), nullptr, 16));
                    i += 4;
                    if (cp < 0x800) {
                        value += static_cast<char>(0xc0 | (cp >> 6));
                        value += static_cast<char>(0x80 | (cp & 0x3f));
                    } else {
                        value += static_cast<char>(0xe0 | (cp >> 12));
                        value += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
                        value += static_cast<char>(0x80 | (cp & 0x3f));
                    }
                } else
                    return false;
            }
            if (!closed)
                return false;
        } else {
            const size_t end = line.find(' ', i);
            value = line.substr(i, end == std::string::npos ? std::string::npos : end - i);
            i = end == std::string::npos ? line.size() : end;
        }
        fields->emplace_back(key, value);
        if (i < line.size()) {
            if (line[i] != ' ')
                return false;
            ++i;
        }
    }
    return true;
}

}  // namespace

TEST_CASE("logq leaves plain values alone and quotes the rest", "[logging]")
{
    CHECK(logq("abc") == "abc");
    CHECK(logq("0/16B3748") == "0/16B3748");
    CHECK(logq("na\xc3\xafve") == "na\xc3\xafve");  // UTF-8 stays as it is
    CHECK(logq("") == "\"\"");
    CHECK(logq("a b") == "\"a b\"");
    CHECK(logq("a=b") == "\"a=b\"");
    CHECK(logq("say \"hi\"") == "\"say \\\"hi\\\"\"");
    CHECK(logq("C:\\dir") == "\"C:\\\\dir\"");
    CHECK(logq("l1\nl2") == "\"l1\\nl2\"");
    CHECK(logq("\r\t") == "\"\\r\\t\"");
    CHECK(logq("\x01\x1b[31m") == "\"\\x01\\x1b[31m\"");
    CHECK(logq("\x7f") == "\"\\x7f\"");
    CHECK(logq("a\0b"s) == "\"a\\x00b\"");
    // What a Unicode-aware reader takes as a line break, or as text running the other way.
    CHECK(logq("a\xc2\x85"
               "b") == "\"a\\u0085b\"");  // NEL
    CHECK(logq("a\xe2\x80\xa8"
               "b") == "\"a\\u2028b\"");  // LINE SEPARATOR
    CHECK(logq("a\xe2\x80\xa9"
               "b") == "\"a\\u2029b\"");  // PARAGRAPH SEPARATOR
    CHECK(logq("\xe2\x80\xae"
               "evil") == "\"\\u202eevil\"");  // RIGHT-TO-LEFT OVERRIDE
    // Bytes that are not UTF-8 are escaped one by one.
    CHECK(logq("\xff\xc3") == "\"\\xff\\xc3\"");
    CHECK(logq("\xed\xa0\x80") == "\"\\xed\\xa0\\x80\"");  // a surrogate
}

TEST_CASE("log levels parse", "[logging]")
{
    CHECK(parse_log_level("warning") == spdlog::level::warn);
    CHECK(parse_log_level("warn") == spdlog::level::warn);
    CHECK(parse_log_level("off") == spdlog::level::off);
    CHECK_THROWS_AS(parse_log_level("verbose"), std::invalid_argument);
    CHECK_THROWS_AS(parse_log_level("INFO"), std::invalid_argument);
}

// Through the real logger (init_logging, its file sink and line format): hostile values, fixed and
// random, each in one event line between two fields; every line must parse back to exactly those
// fields with the value unchanged.
TEST_CASE("no value can forge a log line or a field", "[logging]")
{
    std::vector<std::string> values = {
        "x\n2026-01-01T00:00:00.000000Z level=critical event=forged",
        "x level=critical event=forged",
        "\" event=forged x=\"",
        "\\\" event=forged",
        "x\r\nlevel=error",
        "end=0",
        "",
        " ",
        "\x1b]0;title\x07",
        "a\0b"s,
        "\xff\xfe\xc2\x85\xe2\x80\xa8",
    };
    std::mt19937 rng(20261129);
    const std::vector<std::string> alphabet = {" ",
                                               "\"",
                                               "=",
                                               "\\",
                                               "\n",
                                               "\r",
                                               "\t",
                                               "a",
                                               "b",
                                               "\x01",
                                               "\x7f",
                                               "\xc3\xa9",
                                               "\xc2\x85",
                                               "\xe2\x80\xa8",
                                               "\xe2\x80\xa9",
                                               "\xe2\x80\xae",
                                               "\xff",
                                               "\xc3",
                                               std::string(1, '\0')};
    for (int i = 0; i < 500; ++i) {
        std::string v;
        const int n = static_cast<int>(rng() % 12);
        for (int j = 0; j < n; ++j)
            v += alphabet[rng() % alphabet.size()];
        values.push_back(v);
    }

    char path[] = "/tmp/atx-log-test-XXXXXX";
    const int fd = mkstemp(path);
    REQUIRE(fd >= 0);
    ::close(fd);
    auto previous = spdlog::default_logger();
    init_logging(path, spdlog::level::info);
    for (const auto& v : values)
        spdlog::info("event=probe value={} end=1", logq(v));
    shutdown_logging();
    spdlog::set_default_logger(previous);

    std::ifstream in(path);
    std::vector<std::string> lines;
    for (std::string line; std::getline(in, line);)
        lines.push_back(line);
    std::remove(path);
    REQUIRE(lines.size() == values.size());
    for (size_t i = 0; i < values.size(); ++i) {
        INFO("value " << i << ": line " << lines[i]);
        std::vector<std::pair<std::string, std::string>> fields;
        REQUIRE(parse_logfmt(lines[i], &fields));
        REQUIRE(fields.size() == 4);
        CHECK(fields[0] == std::make_pair("level"s, "info"s));
        CHECK(fields[1] == std::make_pair("event"s, "probe"s));
        CHECK(fields[2].first == "value");
        CHECK(fields[2].second == values[i]);
        CHECK(fields[3] == std::make_pair("end"s, "1"s));
    }
}
