// libFuzzer target: the applier's replication sub-protocol parsing (applier/replication_protocol.h).
//
// The input is one CopyData message as a walsender would send it. parse_copy_data must return or
// throw atx::DecodeError; anything else escaping (or a sanitizer report) is a bug. A 'w' payload
// is then handed to atx::decode_payload, as the applier does. The same bytes also go through
// parse_lsn (as text), and the first 33 bytes through build_status_update, with round-trip checks.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <variant>

#include "bytes.h"
#include "message.h"
#include "replication_protocol.h"

namespace {

[[noreturn]] void fail(const char* what)
{
    std::fprintf(stderr, "fuzz_replication_protocol: %s\n", what);
    std::abort();
}

uint64_t be64(const uint8_t* p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; ++i)
        v = (v << 8) | p[i];
    return v;
}

void check_copy_data(std::string_view in)
{
    using namespace atx::applier;
    CopyMessage msg;
    try {
        msg = parse_copy_data(in);
    } catch (const atx::DecodeError&) {
        return;
    }
    const auto* p = reinterpret_cast<const uint8_t*>(in.data());
    if (auto* x = std::get_if<XLogData>(&msg)) {
        if (in.size() < 25 || in[0] != 'w')
            fail("XLogData from a short or non-'w' message");
        if (x->data_start != be64(p + 1) || x->wal_end != be64(p + 9) ||
            static_cast<uint64_t>(x->send_time) != be64(p + 17))
            fail("XLogData header fields misparsed");
        if (x->payload.data() != in.data() + 25 || x->payload.size() != in.size() - 25)
            fail("XLogData payload is not the rest of the message");
        try {
            (void)atx::decode_payload(x->payload);
        } catch (const atx::DecodeError&) {
        }
    } else {
        const auto& k = std::get<Keepalive>(msg);
        if (in.size() != 18 || in[0] != 'k' || p[17] > 1)
            fail("Keepalive from a message that is not 18 bytes of 'k'");
        if (k.wal_end != be64(p + 1) || static_cast<uint64_t>(k.send_time) != be64(p + 9) ||
            k.reply_requested != (p[17] == 1))
            fail("Keepalive fields misparsed");
    }
}

void check_lsn(std::string_view in)
{
    using namespace atx::applier;
    auto lsn = parse_lsn(in);
    if (!lsn)
        return;
    const std::string text = format_lsn(*lsn);
    auto back = parse_lsn(text);
    if (!back || *back != *lsn)
        fail("parse_lsn(format_lsn(x)) != x");
}

void check_status_update(std::string_view in)
{
    using namespace atx::applier;
    if (in.size() < 33)
        return;
    const auto* p = reinterpret_cast<const uint8_t*>(in.data());
    const uint64_t w = be64(p), f = be64(p + 8), a = be64(p + 16);
    const int64_t t = static_cast<int64_t>(be64(p + 24));
    const bool req = p[32] & 1;
    const std::string msg = build_status_update(w, f, a, t, req);
    try {
        atx::ByteReader r(msg);
        if (r.u8() != 'r' || r.u64() != w || r.u64() != f || r.u64() != a || r.i64() != t || r.u8() != (req ? 1 : 0) ||
            !r.at_end())
            fail("build_status_update wrote something else");
    } catch (const atx::DecodeError&) {
        fail("build_status_update output is short");
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size)
{
    const std::string_view in(reinterpret_cast<const char*>(data), size);
    check_copy_data(in);
    check_lsn(in);
    check_status_update(in);
    return 0;
}
