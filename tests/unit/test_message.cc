// The pg_atx message codec (common/message.{h,cc}): round trip, and loud failure on every kind of
// malformed input (truncated, trailing bytes, bad magic, unknown version, unknown flags, oversize).
#include <catch2/catch.hpp>

#include <string>

#include "message.h"

using namespace atx;

namespace {

Message full_message()
{
    Message m;
    for (size_t i = 0; i < m.id.size(); ++i)
        m.id[i] = static_cast<uint8_t>(0xa0 + i);
    for (size_t i = 0; i < m.lane.size(); ++i)
        m.lane[i] = static_cast<uint8_t>(0x10 + i);
    m.depth = 3;
    m.waited = true;
    m.database_oid = 16384;
    m.role_oid = 10;
    m.role_name = "alice";
    m.session_role_oid = 16385;
    m.session_role_name = "bob";
    m.caller_xid = 0x0000000100000abcULL;
    m.emit_time = -1234567890123LL;  // before 2000-01-01: negative TimestampTz
    m.gucs = {{"search_path", "app, public", false},
              {"TimeZone", "UTC", false},
              {"empty", "", false},
              {"log_statement", "all", true}};
    m.statement = "INSERT INTO audit(a, b, c, d) VALUES ($1, $2, $3, $4)";
    Param text;
    text.type_oid = 25;
    text.type_name = "text";
    text.value = "h\xc3\xa9llo";
    Param null;
    null.type_oid = 23;
    null.type_name = "int4";
    null.is_null = true;
    Param bin;
    bin.type_oid = 17;
    bin.type_name = "bytea";
    bin.binary = true;
    bin.value = std::string("\x00\x01\xff\x00", 4);
    Param empty;
    empty.type_oid = 25;
    empty.type_name = "text";
    empty.value = "";
    m.params = {text, null, bin, empty};
    m.key = "order-42";
    return m;
}

const std::string kMac(kMacSize, '\x5a');

std::string payload_of(const Message& m) { return encode_body(m) + kMac; }

}  // namespace

TEST_CASE("message round trip with gucs, params (NULL, binary) and key", "[message]")
{
    Message m = full_message();
    std::string body = encode_body(m);
    std::string payload = body + kMac;
    DecodedPayload d = decode_payload(payload);
    CHECK(d.message == m);
    CHECK(d.body == body);
    CHECK(d.mac == kMac);
    CHECK(peek_version(payload) == kFormatVersion);
    CHECK(d.message.params[1].is_null);
    CHECK(d.message.params[2].binary);
    CHECK(d.message.params[2].value.size() == 4);
    REQUIRE(d.message.key);
    CHECK(*d.message.key == "order-42");
}

TEST_CASE("message without key, gucs or params round trips", "[message]")
{
    Message m;
    m.statement = "SELECT 1";
    DecodedPayload d = decode_payload(payload_of(m));
    CHECK(d.message == m);
    CHECK_FALSE(d.message.key);

    SECTION("an empty key is distinct from no key")
    {
        m.key = "";
        DecodedPayload d2 = decode_payload(payload_of(m));
        REQUIRE(d2.message.key);
        CHECK(d2.message.key->empty());
    }
}

TEST_CASE("a NULL parameter's value is not encoded", "[message]")
{
    Message m = full_message();
    m.params[1].value = "ignored";
    DecodedPayload d = decode_payload(payload_of(m));
    CHECK(d.message.params[1].is_null);
    CHECK(d.message.params[1].value.empty());
}

TEST_CASE("every truncation of a valid payload throws DecodeError", "[message]")
{
    for (const Message& m : {full_message(), Message{}}) {
        const std::string payload = payload_of(m);
        for (size_t len = 0; len < payload.size(); ++len) {
            INFO("length " << len << " of " << payload.size());
            CHECK_THROWS_AS(decode_payload(std::string_view(payload).substr(0, len)), DecodeError);
        }
        CHECK_NOTHROW(decode_payload(payload));
    }
}

TEST_CASE("trailing bytes throw", "[message]")
{
    const Message m = full_message();
    const std::string body = encode_body(m);
    SECTION("between body and MAC")
    {
        CHECK_THROWS_AS(decode_payload(body + "x" + kMac), DecodeError);
        CHECK_THROWS_AS(decode_payload(body + std::string(100, '\0') + kMac), DecodeError);
    }
    SECTION("after the MAC") { CHECK_THROWS_AS(decode_payload(body + kMac + "x"), DecodeError); }
}

TEST_CASE("bad magic throws", "[message]")
{
    std::string payload = payload_of(full_message());
    for (size_t i = 0; i < 3; ++i) {
        std::string bad = payload;
        bad[i] = static_cast<char>(bad[i] ^ 0x20);
        CHECK_THROWS_AS(decode_payload(bad), DecodeError);
        CHECK_THROWS_AS(peek_version(bad), DecodeError);
    }
    CHECK_THROWS_AS(decode_payload(""), DecodeError);
    CHECK_THROWS_AS(peek_version("AT"), DecodeError);
}

TEST_CASE("an unknown format version throws UnsupportedVersion", "[message]")
{
    std::string payload = payload_of(full_message());
    payload[3] = kFormatVersion + 1;
    CHECK(peek_version(payload) == kFormatVersion + 1);
    try {
        decode_payload(payload);
        FAIL("no exception");
    } catch (const UnsupportedVersion& e) {
        CHECK(e.version == kFormatVersion + 1);
    }
    // Even a bare header of a newer version is reported as such, not as truncated.
    CHECK_THROWS_AS(decode_payload(std::string("ATX\x04", 4)), UnsupportedVersion);
    payload[3] = 0;
    CHECK_THROWS_AS(decode_payload(payload), UnsupportedVersion);
    // UnsupportedVersion is a DecodeError.
    CHECK_THROWS_AS(decode_payload(payload), DecodeError);
}

TEST_CASE("unknown or inconsistent flag bits are rejected", "[message]")
{
    const Message keyed = full_message();
    const std::string payload = payload_of(keyed);

    SECTION("message flags: every unknown bit")
    {
        for (int bit = 3; bit < 8; ++bit) {
            std::string bad = payload;
            bad[4] = static_cast<char>(bad[4] | (1 << bit));
            INFO("bit " << bit);
            CHECK_THROWS_AS(decode_payload(bad), DecodeError);
        }
    }
    SECTION("key flag cleared although a key follows: trailing bytes")
    {
        std::string bad = payload;
        bad[4] = static_cast<char>(bad[4] & ~kFlagHasKey);
        CHECK_THROWS_AS(decode_payload(bad), DecodeError);
    }
    SECTION("key flag set although no key follows: truncated")
    {
        Message m = keyed;
        m.key.reset();
        std::string bad = payload_of(m);
        bad[4] = static_cast<char>(bad[4] | kFlagHasKey);
        CHECK_THROWS_AS(decode_payload(bad), DecodeError);
    }
    SECTION("parameter flags")
    {
        Message m;
        m.role_name = "r";
        m.statement = "SELECT $1";
        Param p;
        p.type_oid = 25;
        p.type_name = "text";
        p.value = "v";
        m.params = {p};
        const std::string good = payload_of(m);
        // magic 3, version 1, flags 1, uuid 16, lane 16, depth 1, db 4, role 4, role name 2+1,
        // session role 4, session role name 2+0, xid 8, time 8, guc count 2, statement 4+9,
        // param count 2, type oid 4, type name 2+4 -> param flags
        const size_t off =
            3 + 1 + 1 + 16 + 16 + 1 + 4 + 4 + 2 + 1 + 4 + 2 + 8 + 8 + 2 + 4 + m.statement.size() + 2 + 4 + 2 + 4;
        REQUIRE(good[off] == 0);
        REQUIRE_NOTHROW(decode_payload(good));
        for (int bit = 2; bit < 8; ++bit) {
            std::string bad = good;
            bad[off] = static_cast<char>(1 << bit);
            INFO("bit " << bit);
            CHECK_THROWS_AS(decode_payload(bad), DecodeError);
        }
        // NULL flag on a parameter that carries a value.
        std::string bad = good;
        bad[off] = static_cast<char>(kParamNull);
        CHECK_THROWS_AS(decode_payload(bad), DecodeError);
        // Binary flag alone is fine.
        std::string bin = good;
        bin[off] = static_cast<char>(kParamBinary);
        CHECK(decode_payload(bin).message.params[0].binary);
    }
}

TEST_CASE("a length field pointing past the end throws", "[message]")
{
    Message m;
    m.statement = "SELECT 1";
    std::string payload = payload_of(m);
    // role name length (offset 46) set to 0xffff
    payload[46] = '\xff';
    payload[47] = '\xff';
    CHECK_THROWS_AS(decode_payload(payload), DecodeError);
}

TEST_CASE("oversize fields throw std::length_error on encode", "[message]")
{
    SECTION("more than 65535 parameters")
    {
        Message m;
        m.params.resize(65536);
        CHECK_THROWS_AS(encode_body(m), std::length_error);
        m.params.resize(65535);
        CHECK_NOTHROW(encode_body(m));
    }
    SECTION("more than 65535 GUCs")
    {
        Message m;
        m.gucs.resize(65536);
        CHECK_THROWS_AS(encode_body(m), std::length_error);
    }
    SECTION("str16 fields longer than 65535 bytes")
    {
        Message m;
        m.role_name = std::string(65536, 'r');
        CHECK_THROWS_AS(encode_body(m), std::length_error);
        m.role_name = std::string(65535, 'r');
        CHECK_NOTHROW(decode_payload(payload_of(m)));
        m.role_name.clear();
        m.key = std::string(65536, 'k');
        CHECK_THROWS_AS(encode_body(m), std::length_error);
        m.key.reset();
        m.params.resize(1);
        m.params[0].type_name = std::string(70000, 't');
        CHECK_THROWS_AS(encode_body(m), std::length_error);
    }
    SECTION("a large statement fits its 32-bit prefix")
    {
        Message m;
        m.statement = std::string(1 << 20, 's');
        CHECK(decode_payload(payload_of(m)).message.statement.size() == (1u << 20));
    }
}

TEST_CASE("uuid string round trip", "[message]")
{
    Uuid id{};
    for (size_t i = 0; i < id.size(); ++i)
        id[i] = static_cast<uint8_t>(i * 17 + 3);
    const std::string s = uuid_to_string(id);
    CHECK(s.size() == 36);
    CHECK(s[8] == '-');
    CHECK(s[13] == '-');
    CHECK(s[18] == '-');
    CHECK(s[23] == '-');
    auto back = uuid_from_string(s);
    REQUIRE(back);
    CHECK(*back == id);

    CHECK(uuid_to_string(Uuid{}) == "00000000-0000-0000-0000-000000000000");
    auto upper = uuid_from_string("A0A1A2A3-A4A5-A6A7-A8A9-AAABACADAEAF");
    REQUIRE(upper);
    CHECK(uuid_to_string(*upper) == "a0a1a2a3-a4a5-a6a7-a8a9-aaabacadaeaf");

    CHECK_FALSE(uuid_from_string(""));
    CHECK_FALSE(uuid_from_string("a0a1a2a3-a4a5-a6a7-a8a9-aaabacadaea"));    // 31 digits
    CHECK_FALSE(uuid_from_string("a0a1a2a3-a4a5-a6a7-a8a9-aaabacadaeaf0"));  // 33 digits
    CHECK_FALSE(uuid_from_string("g0a1a2a3-a4a5-a6a7-a8a9-aaabacadaeaf"));   // not hex
}

// A version 1 payload, byte by byte as pg_atx 0.1 wrote it: messages written before an upgrade
// are still in the slot after it.
TEST_CASE("a version 1 payload decodes with a zero lane and no session user", "[message]")
{
    ByteWriter w;
    w.bytes("ATX");
    w.u8(1);
    w.u8(kFlagHasKey);
    for (int i = 0; i < 16; ++i)
        w.u8(static_cast<uint8_t>(i));
    w.u32(16384);
    w.u32(10);
    w.str16("alice");
    w.u64(77);
    w.i64(123456);
    w.u16(1);
    w.str16("search_path");
    w.str32("public");
    w.str32("INSERT INTO t VALUES ($1)");
    w.u16(1);
    w.u32(23);
    w.str16("integer");
    w.u8(kParamBinary);
    w.str32(std::string("\0\0\0\x2a", 4));
    w.str16("k1");
    const std::string payload = w.take() + kMac;
    const Message m = decode_payload(payload).message;
    CHECK(m.version == 1);
    CHECK(m.lane == Uuid{});
    CHECK(m.depth == 0);
    CHECK_FALSE(m.waited);
    CHECK(m.session_role_oid == 0);
    CHECK(m.session_role_name.empty());
    CHECK(m.role_name == "alice");
    CHECK(m.caller_xid == 77);
    REQUIRE(m.gucs.size() == 1);
    CHECK(m.gucs[0].value == "public");
    CHECK_FALSE(m.gucs[0].privileged);
    REQUIRE(m.params.size() == 1);
    CHECK(m.params[0].value == std::string("\0\0\0\x2a", 4));
    REQUIRE(m.key);
    CHECK(*m.key == "k1");
    // Version 1 knew no "waited" flag.
    std::string bad = payload;
    bad[4] = static_cast<char>(kFlagHasKey | kFlagWaited);
    CHECK_THROWS_AS(decode_payload(bad), DecodeError);
    // It re-encodes byte for byte in its own version (one encoding per message and version) ...
    CHECK(encode_body(m) + kMac == payload);
    // ... and a message using what version 1 cannot carry is refused, not silently cut.
    Message newer = m;
    newer.depth = 1;
    CHECK_THROWS_AS(encode_body(newer), std::invalid_argument);
    newer = m;
    newer.gucs[0].privileged = true;
    CHECK_THROWS_AS(encode_body(newer), std::invalid_argument);
    newer = m;
    newer.version = kFormatVersion + 1;
    CHECK_THROWS_AS(encode_body(newer), std::invalid_argument);
}

TEST_CASE("the cancel-if-abandoned flag is version 3's", "[message]")
{
    Message m = full_message();
    m.waited = true;
    m.cancel_if_abandoned = true;
    const std::string payload = payload_of(m);
    CHECK(static_cast<uint8_t>(payload[4]) & kFlagCancelIfAbandoned);
    CHECK(decode_payload(payload).message == m);
    // A version 2 message cannot carry it: refused, not silently dropped ...
    Message v2 = m;
    v2.version = 2;
    CHECK_THROWS_AS(encode_body(v2), std::invalid_argument);
    v2.cancel_if_abandoned = false;
    std::string p2 = payload_of(v2);
    CHECK(decode_payload(p2).message == v2);
    // ... and a version 2 payload with the bit set is malformed.
    p2[4] = static_cast<char>(p2[4] | kFlagCancelIfAbandoned);
    CHECK_THROWS_AS(decode_payload(p2), DecodeError);
}

TEST_CASE("an unknown flag on a carried setting is rejected", "[message]")
{
    Message m;
    m.gucs = {{"x", "", false}};
    std::string payload = payload_of(m);
    // Fixed part 3+1+1+16+16+1+4+4+2+4+2+8+8 = 70, guc count 2, name 2+1, value 4+0 -> flags.
    const size_t off = 70 + 2 + 3 + 4;
    REQUIRE(payload[off] == 0);
    payload[off] = 0x02;
    CHECK_THROWS_AS(decode_payload(payload), DecodeError);
    payload[off] = kGucPrivileged;
    CHECK(decode_payload(payload).message.gucs[0].privileged);
}
