// libFuzzer target: atx::decode_payload, the applier's parser for pg_atx messages from the WAL.
//
// Any input must either decode or throw atx::DecodeError (UnsupportedVersion is one); anything
// else escaping, a sanitizer report or a failed round trip is a bug. A decoded message is
// re-encoded and decoded again: the message must be equal and, because the format has exactly
// one encoding per message, so must the body bytes.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "message.h"

namespace {

[[noreturn]] void fail(const char* what)
{
    std::fprintf(stderr, "fuzz_message_decode: %s\n", what);
    std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size)
{
    const std::string_view in(reinterpret_cast<const char*>(data), size);

    // peek_version must agree with decode_payload about the magic.
    bool has_magic = true;
    try {
        (void)atx::peek_version(in);
    } catch (const atx::DecodeError&) {
        has_magic = false;
    }

    atx::DecodedPayload d;
    try {
        d = atx::decode_payload(in);
    } catch (const atx::UnsupportedVersion& e) {
        if (!has_magic || e.version == atx::kFormatVersion)
            fail("UnsupportedVersion without magic or for the current version");
        return 0;
    } catch (const atx::DecodeError&) {
        return 0;
    }
    if (!has_magic)
        fail("decoded a payload that peek_version rejects");
    if (d.mac.size() != atx::kMacSize || d.body.size() + d.mac.size() != in.size() || d.body.data() != in.data() ||
        d.mac.data() != in.data() + d.body.size())
        fail("body/mac do not partition the input");

    std::string body;
    try {
        body = atx::encode_body(d.message);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "encode_body threw: %s\n", e.what());
        fail("a decoded message does not re-encode");
    }
    if (body != d.body)
        fail("re-encoded body differs from the decoded body");

    const std::string again_in = body + std::string(d.mac);
    atx::DecodedPayload again;
    try {
        again = atx::decode_payload(again_in);
    } catch (const atx::DecodeError& e) {
        std::fprintf(stderr, "decode(encode(m)) threw: %s\n", e.what());
        fail("re-encoded message does not decode");
    }
    if (!(again.message == d.message))
        fail("decode(encode(m) + mac) != m");
    if (again.mac != d.mac)
        fail("mac changed in the round trip");

    // The UUID text form round-trips too.
    auto id = atx::uuid_from_string(atx::uuid_to_string(d.message.id));
    if (!id || *id != d.message.id)
        fail("uuid text round trip");
    return 0;
}
