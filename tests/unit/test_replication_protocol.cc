// Replication protocol parsing/building (applier/replication_protocol.h).
#include <catch2/catch.hpp>

#include <string>

#include "bytes.h"
#include "replication_protocol.h"

using namespace atx::applier;

namespace {

std::string xlogdata(uint64_t start, uint64_t end, int64_t t, const std::string& payload)
{
    atx::ByteWriter w;
    w.u8('w');
    w.u64(start);
    w.u64(end);
    w.i64(t);
    w.bytes(payload);
    return w.take();
}

std::string keepalive(uint64_t end, int64_t t, uint8_t reply)
{
    atx::ByteWriter w;
    w.u8('k');
    w.u64(end);
    w.i64(t);
    w.u8(reply);
    return w.take();
}

}  // namespace

TEST_CASE("parse XLogData 'w'", "[replication]")
{
    const std::string frame = xlogdata(0x0000000100000010ULL, 0x0000000100000020ULL, 123456789, "MATX\x01");
    CopyMessage m = parse_copy_data(frame);
    REQUIRE(std::holds_alternative<XLogData>(m));
    const auto& x = std::get<XLogData>(m);
    CHECK(x.data_start == 0x0000000100000010ULL);
    CHECK(x.wal_end == 0x0000000100000020ULL);
    CHECK(x.send_time == 123456789);
    CHECK(x.payload == std::string("MATX\x01"));
}

TEST_CASE("parse XLogData with an empty payload", "[replication]")
{
    CopyMessage m = parse_copy_data(xlogdata(1, 2, 3, ""));
    REQUIRE(std::holds_alternative<XLogData>(m));
    CHECK(std::get<XLogData>(m).payload.empty());
}

TEST_CASE("parse keepalive 'k'", "[replication]")
{
    CopyMessage m = parse_copy_data(keepalive(0xABCDEF0012345678ULL, -5, 1));
    REQUIRE(std::holds_alternative<Keepalive>(m));
    const auto& k = std::get<Keepalive>(m);
    CHECK(k.wal_end == 0xABCDEF0012345678ULL);
    CHECK(k.send_time == -5);
    CHECK(k.reply_requested);
    CHECK_FALSE(std::get<Keepalive>(parse_copy_data(keepalive(1, 2, 0))).reply_requested);
}

TEST_CASE("truncated frames throw DecodeError", "[replication]")
{
    const std::string w = xlogdata(1, 2, 3, "");
    for (size_t n = 0; n < w.size(); ++n)  // every strict prefix of the 25-byte header
        CHECK_THROWS_AS(parse_copy_data(w.substr(0, n)), atx::DecodeError);
    const std::string k = keepalive(1, 2, 1);
    REQUIRE(k.size() == 18);
    for (size_t n = 0; n < k.size(); ++n)
        CHECK_THROWS_AS(parse_copy_data(k.substr(0, n)), atx::DecodeError);
}

TEST_CASE("oversized or odd frames throw DecodeError", "[replication]")
{
    CHECK_THROWS_AS(parse_copy_data(keepalive(1, 2, 0) + "x"), atx::DecodeError);
    CHECK_THROWS_AS(parse_copy_data(keepalive(1, 2, 7)), atx::DecodeError);
    CHECK_THROWS_AS(parse_copy_data(std::string("z") + std::string(24, '\0')), atx::DecodeError);
    CHECK_THROWS_AS(parse_copy_data(std::string("r") + std::string(33, '\0')), atx::DecodeError);
}

TEST_CASE("build standby status update 'r'", "[replication]")
{
    const std::string r = build_status_update(0x0102030405060708ULL, 0x1112131415161718ULL, 0x2122232425262728ULL,
                                              0x3132333435363738LL, true);
    const std::string expect = std::string("r") + "\x01\x02\x03\x04\x05\x06\x07\x08" +
                               "\x11\x12\x13\x14\x15\x16\x17\x18" + "\x21\x22\x23\x24\x25\x26\x27\x28" +
                               "\x31\x32\x33\x34\x35\x36\x37\x38" + std::string(1, '\x01');
    REQUIRE(r.size() == 34);
    CHECK(r == expect);
    const std::string r0 = build_status_update(0, 0, 0, 0, false);
    CHECK(r0 == std::string("r") + std::string(33, '\0'));
}

TEST_CASE("LSN text format and parse", "[replication]")
{
    CHECK(format_lsn(0) == "0/0");
    CHECK(format_lsn(0x16B3F08) == "0/16B3F08");
    CHECK(format_lsn(0x00000001000000FFULL) == "1/FF");
    CHECK(format_lsn(0xFFFFFFFFFFFFFFFFULL) == "FFFFFFFF/FFFFFFFF");
    CHECK(parse_lsn("0/0") == 0u);
    CHECK(parse_lsn("0/16B3F08") == 0x16B3F08u);
    CHECK(parse_lsn("1/ff") == 0x1000000FFULL);
    CHECK(parse_lsn("FFFFFFFF/FFFFFFFF") == 0xFFFFFFFFFFFFFFFFULL);
    for (uint64_t v : {0ULL, 1ULL, 0x123456789ABCDEFULL, 0xFFFFFFFF00000000ULL})
        CHECK(parse_lsn(format_lsn(v)) == v);
    CHECK_FALSE(parse_lsn(""));
    CHECK_FALSE(parse_lsn("0"));
    CHECK_FALSE(parse_lsn("/1"));
    CHECK_FALSE(parse_lsn("1/"));
    CHECK_FALSE(parse_lsn("g/1"));
    CHECK_FALSE(parse_lsn("1/2/3"));
    CHECK_FALSE(parse_lsn("123456789/0"));
    CHECK_FALSE(parse_lsn(" 0/1"));
}

TEST_CASE("PostgreSQL epoch conversion", "[replication]")
{
    CHECK(unix_to_pg_us(946684800LL * 1000000LL) == 0);
    CHECK(pg_to_unix_us(0) == 946684800LL * 1000000LL);
    CHECK(pg_now() > 0);
}
