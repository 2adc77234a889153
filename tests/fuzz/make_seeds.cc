// Writes the seed corpora of the fuzz targets (tests/fuzz/corpus/<target>/).
//
//   build/fuzz/make-seeds tests/fuzz/corpus
//
// Deterministic: the same files every run, so regenerating them shows no diff unless the format
// changed. Payloads are built with atx::encode_body plus a dummy 32-byte MAC (the decoder does
// not verify it). No Catch2, no libFuzzer: a plain C++ program.
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "bytes.h"
#include "message.h"
#include "replication_protocol.h"

namespace fs = std::filesystem;

namespace {

void write_file(const fs::path& dir, const std::string& name, const std::string& bytes)
{
    fs::create_directories(dir);
    std::ofstream out(dir / name, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    if (!out) {
        std::fprintf(stderr, "make-seeds: cannot write %s\n", (dir / name).c_str());
        std::exit(1);
    }
}

std::string mac() { return std::string(atx::kMacSize, '\x5a'); }

atx::Message base()
{
    atx::Message m;
    for (size_t i = 0; i < m.id.size(); ++i)
        m.id[i] = static_cast<uint8_t>(0x10 + i);
    m.id[6] = 0x4f;  // version 4
    m.id[8] = 0x8a;  // variant 10
    m.database_oid = 16384;
    m.role_oid = 10;
    m.role_name = "postgres";
    m.caller_xid = 745;
    m.emit_time = 817'000'000'000'000;  // late 2025, as TimestampTz (microseconds since 2000-01-01)
    m.statement = "INSERT INTO audit_log(msg) VALUES ('hello')";
    return m;
}

std::vector<std::pair<std::string, std::string>> payloads()
{
    std::vector<std::pair<std::string, std::string>> out;

    atx::Message m = base();
    out.emplace_back("minimal", atx::encode_body(m) + mac());

    m = base();
    m.statement = "";
    m.role_name = "";
    out.emplace_back("empty_strings", atx::encode_body(m) + mac());

    m = base();
    m.statement = "INSERT INTO audit_log(who, what, n, blob, note) VALUES ($1, $2, $3, $4, $5)";
    m.gucs = {{"search_path", "app, public"}, {"TimeZone", "UTC"}, {"DateStyle", "ISO, MDY"}};
    m.params.push_back({25, "text", false, false, "alice"});
    m.params.push_back({3802, "jsonb", false, false, R"({"k": [1, 2, "three"]})"});
    m.params.push_back({20, "int8", false, true, std::string("\0\0\0\0\0\0\0\x2a", 8)});
    m.params.push_back({17, "bytea", false, true, std::string("\x00\xff\x10\x80", 4)});
    m.params.push_back({25, "text", true, false, ""});
    out.emplace_back("gucs_params", atx::encode_body(m) + mac());

    m.key = "order-42/refund";
    out.emplace_back("gucs_params_key", atx::encode_body(m) + mac());

    m = base();
    m.key = "";
    m.params.push_back({0, "", true, true, ""});
    out.emplace_back("empty_key_null_binary", atx::encode_body(m) + mac());

    m = base();
    m.statement = std::string(300, 'x');
    m.gucs.push_back({std::string(40, 'g'), std::string(500, 'v')});
    out.emplace_back("long_strings", atx::encode_body(m) + mac());

    return out;
}

}  // namespace

int main(int argc, char** argv)
{
    if (argc != 2) {
        std::fprintf(stderr, "usage: %s CORPUS_DIR   (e.g. tests/fuzz/corpus)\n", argv[0]);
        return 2;
    }
    const fs::path root = argv[1];
    const fs::path msg_dir = root / "fuzz_message_decode";
    const fs::path proto_dir = root / "fuzz_replication_protocol";

    const auto valid = payloads();
    for (const auto& [name, bytes] : valid)
        write_file(msg_dir, "valid_" + name, bytes);

    // Truncations of the richest message: inside the header, the GUCs, a parameter, the key, the MAC.
    const std::string& rich = valid[3].second;
    for (size_t cut : {size_t(2), size_t(4), size_t(20), size_t(40), size_t(60), rich.size() / 2,
                       rich.size() - atx::kMacSize - 3, rich.size() - 1})
        write_file(msg_dir, "truncated_" + std::to_string(cut), rich.substr(0, cut));

    std::string v2 = valid[0].second;
    v2[3] = 2;
    write_file(msg_dir, "unsupported_version_2", v2);
    std::string bad_magic = valid[0].second;
    bad_magic[0] = 'B';
    write_file(msg_dir, "bad_magic", bad_magic);
    std::string bad_flags = valid[0].second;
    bad_flags[4] = '\x02';
    write_file(msg_dir, "bad_flags", bad_flags);
    write_file(msg_dir, "trailing_byte", atx::encode_body(base()) + "!" + mac());

    // Replication protocol: 'w' frames around valid and truncated payloads, 'k' frames.
    auto xlog = [](uint64_t start, uint64_t end, int64_t t, const std::string& payload) {
        atx::ByteWriter w;
        w.u8('w');
        w.u64(start);
        w.u64(end);
        w.i64(t);
        w.bytes(payload);
        return w.take();
    };
    auto keepalive = [](uint64_t end, int64_t t, uint8_t req) {
        atx::ByteWriter w;
        w.u8('k');
        w.u64(end);
        w.i64(t);
        w.u8(req);
        return w.take();
    };
    const int64_t t = 817'000'000'000'000;
    write_file(proto_dir, "w_minimal", xlog(0x16B374D848, 0x16B374D900, t, valid[0].second));
    write_file(proto_dir, "w_gucs_params_key", xlog(0x1000028, 0x1000100, t, valid[3].second));
    write_file(proto_dir, "w_empty_payload", xlog(0x1000028, 0x1000028, t, ""));
    write_file(proto_dir, "w_truncated_payload", xlog(0x2000000, 0x2000000, t, rich.substr(0, 40)));
    write_file(proto_dir, "w_truncated_header", xlog(1, 2, t, "").substr(0, 13));
    write_file(proto_dir, "k_no_reply", keepalive(0x16B374D900, t, 0));
    write_file(proto_dir, "k_reply", keepalive(0xFFFFFFFFFFFFFFFFull, -1, 1));
    write_file(proto_dir, "k_bad_reply_byte", keepalive(0x100, t, 2));
    write_file(proto_dir, "k_trailing", keepalive(0x100, t, 0) + "x");
    write_file(proto_dir, "r_status_update",
               atx::applier::build_status_update(0x16B374D900, 0x16B374D848, 0x16B374D848, t, false));
    write_file(proto_dir, "lsn_text", "16/B374D848");
    write_file(proto_dir, "unknown_type", "Z");
    return 0;
}
