#include "message.h"

#include <cstring>
#include <stdexcept>

#include "cpp_only.h"

namespace atx {

std::string encode_body(const Message& m)
{
    // Version 1 (what pg_atx 0.1 wrote) has no place for the newer fields: a message that uses
    // them cannot be written in it.
    const bool v1 = m.version == 1;
    if (m.version < kOldestFormatVersion || m.version > kFormatVersion)
        throw std::invalid_argument("cannot encode pg_atx message format version " + std::to_string(m.version));
    if (v1 && (m.waited || m.depth != 0 || m.lane != Uuid{} || m.session_role_oid != 0 || !m.session_role_name.empty()))
        throw std::invalid_argument("format version 1 has no waited flag, lane, depth or session user");
    if (m.version < 3 && m.cancel_if_abandoned)
        throw std::invalid_argument("format versions 1 and 2 have no cancel-if-abandoned flag");
    ByteWriter w;
    w.bytes(std::string_view(kMagic, sizeof kMagic));
    w.u8(m.version);
    w.u8((m.key ? kFlagHasKey : 0) | (m.waited ? kFlagWaited : 0) |
         (m.cancel_if_abandoned ? kFlagCancelIfAbandoned : 0));
    w.bytes(std::string_view(reinterpret_cast<const char*>(m.id.data()), m.id.size()));
    if (!v1) {
        w.bytes(std::string_view(reinterpret_cast<const char*>(m.lane.data()), m.lane.size()));
        w.u8(m.depth);
    }
    w.u32(m.database_oid);
    w.u32(m.role_oid);
    w.str16(m.role_name);
    if (!v1) {
        w.u32(m.session_role_oid);
        w.str16(m.session_role_name);
    }
    w.u64(m.caller_xid);
    w.i64(m.emit_time);
    if (m.gucs.size() > UINT16_MAX)
        throw std::length_error("too many GUC settings");
    w.u16(static_cast<uint16_t>(m.gucs.size()));
    for (const auto& g : m.gucs) {
        if (v1 && g.privileged)
            throw std::invalid_argument("format version 1 has no privileged settings");
        w.str16(g.name);
        w.str32(g.value);
        if (!v1)
            w.u8(g.privileged ? kGucPrivileged : 0);
    }
    w.str32(m.statement);
    if (m.params.size() > UINT16_MAX)
        throw std::length_error("too many parameters: " + std::to_string(m.params.size()) + " (at most 65535)");
    w.u16(static_cast<uint16_t>(m.params.size()));
    for (const auto& p : m.params) {
        w.u32(p.type_oid);
        w.str16(p.type_name);
        w.u8((p.is_null ? kParamNull : 0) | (p.binary ? kParamBinary : 0));
        w.str32(p.is_null ? std::string_view() : std::string_view(p.value));
    }
    if (m.key)
        w.str16(*m.key);
    return w.take();
}

uint8_t peek_version(std::string_view payload)
{
    ByteReader r(payload);
    if (r.bytes(3) != std::string_view(kMagic, sizeof kMagic))
        throw DecodeError("not a pg_atx message (bad magic)");
    return r.u8();
}

DecodedPayload decode_payload(std::string_view payload)
{
    uint8_t version = peek_version(payload);
    if (version < kOldestFormatVersion || version > kFormatVersion)
        throw UnsupportedVersion(version);
    if (payload.size() < 5 + kMacSize)
        throw DecodeError("truncated pg_atx message: " + std::to_string(payload.size()) + " bytes");

    DecodedPayload out;
    out.body = payload.substr(0, payload.size() - kMacSize);
    out.mac = payload.substr(payload.size() - kMacSize);

    ByteReader r(out.body);
    r.bytes(4);  // magic + version, checked above
    uint8_t flags = r.u8();
    const uint8_t known = version >= 3   ? (kFlagHasKey | kFlagWaited | kFlagCancelIfAbandoned)
                          : version == 2 ? (kFlagHasKey | kFlagWaited)
                                         : kFlagHasKey;
    if (flags & ~known)
        throw DecodeError("unknown message flags " + std::to_string(flags));
    Message& m = out.message;
    m.version = version;
    m.waited = flags & kFlagWaited;
    m.cancel_if_abandoned = flags & kFlagCancelIfAbandoned;
    std::string_view id = r.bytes(16);
    std::memcpy(m.id.data(), id.data(), 16);
    if (version >= 2) {
        std::string_view lane = r.bytes(16);
        std::memcpy(m.lane.data(), lane.data(), 16);
        m.depth = r.u8();
    }
    m.database_oid = r.u32();
    m.role_oid = r.u32();
    m.role_name = std::string(r.str16());
    if (version >= 2) {
        m.session_role_oid = r.u32();
        m.session_role_name = std::string(r.str16());
    }
    m.caller_xid = r.u64();
    m.emit_time = r.i64();
    uint16_t nguc = r.u16();
    m.gucs.reserve(nguc);
    for (uint16_t i = 0; i < nguc; ++i) {
        GucSetting g;
        g.name = std::string(r.str16());
        g.value = std::string(r.str32());
        if (version >= 2) {
            uint8_t gf = r.u8();
            if (gf & ~kGucPrivileged)
                throw DecodeError("unknown flags on setting " + g.name);
            g.privileged = gf & kGucPrivileged;
        }
        m.gucs.push_back(std::move(g));
    }
    m.statement = std::string(r.str32());
    uint16_t nparam = r.u16();
    m.params.reserve(nparam);
    for (uint16_t i = 0; i < nparam; ++i) {
        Param p;
        p.type_oid = r.u32();
        p.type_name = std::string(r.str16());
        uint8_t pf = r.u8();
        if (pf & ~(kParamNull | kParamBinary))
            throw DecodeError("unknown flags on parameter $" + std::to_string(i + 1));
        p.is_null = pf & kParamNull;
        p.binary = pf & kParamBinary;
        p.value = std::string(r.str32());
        if (p.is_null && !p.value.empty())
            throw DecodeError("NULL parameter $" + std::to_string(i + 1) + " carries a value");
        m.params.push_back(std::move(p));
    }
    if (flags & kFlagHasKey)
        m.key = std::string(r.str16());
    if (!r.at_end())
        throw DecodeError(std::to_string(r.remaining()) + " trailing bytes after pg_atx message body");
    return out;
}

bool operator==(const GucSetting& a, const GucSetting& b)
{
    return a.name == b.name && a.value == b.value && a.privileged == b.privileged;
}

bool operator==(const Param& a, const Param& b)
{
    return a.type_oid == b.type_oid && a.type_name == b.type_name && a.is_null == b.is_null && a.binary == b.binary &&
           a.value == b.value;
}

bool operator==(const Message& a, const Message& b)
{
    return a.version == b.version && a.id == b.id && a.lane == b.lane && a.depth == b.depth && a.waited == b.waited &&
           a.cancel_if_abandoned == b.cancel_if_abandoned && a.database_oid == b.database_oid &&
           a.role_oid == b.role_oid && a.role_name == b.role_name && a.session_role_oid == b.session_role_oid &&
           a.session_role_name == b.session_role_name && a.caller_xid == b.caller_xid && a.emit_time == b.emit_time &&
           a.gucs == b.gucs && a.statement == b.statement && a.params == b.params && a.key == b.key;
}

std::string uuid_to_string(const Uuid& id)
{
    static const char* hex = "0123456789abcdef";
    std::string s;
    s.reserve(36);
    for (size_t i = 0; i < id.size(); ++i) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            s.push_back('-');
        s.push_back(hex[id[i] >> 4]);
        s.push_back(hex[id[i] & 0xf]);
    }
    return s;
}

std::optional<Uuid> uuid_from_string(std::string_view s)
{
    auto nib = [](char c) -> int {
        if (c >= '0' && c <= '9')
            return c - '0';
        if (c >= 'a' && c <= 'f')
            return c - 'a' + 10;
        if (c >= 'A' && c <= 'F')
            return c - 'A' + 10;
        return -1;
    };
    Uuid out{};
    size_t j = 0;
    for (size_t i = 0; i < s.size(); ++i) {
        if (s[i] == '-')
            continue;
        if (j >= 32)
            return std::nullopt;
        int v = nib(s[i]);
        if (v < 0)
            return std::nullopt;
        if (j % 2 == 0)
            out[j / 2] = static_cast<uint8_t>(v << 4);
        else
            out[j / 2] |= static_cast<uint8_t>(v);
        ++j;
    }
    if (j != 32)
        return std::nullopt;
    return out;
}

}  // namespace atx
