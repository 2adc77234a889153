// Converts between the pure C++ codec (common/message.h) and AtxMessageC.
// The C++ frames here own std::strings: every PostgreSQL call (palloc) goes
// through pg_guard, and nothing escapes the noexcept functions but a bool.
#include "codec_bridge.h"

#include <cstring>

#include "message.h"

namespace {

// palloc + copy, with a PostgreSQL OOM turned into PgException.
char* pg_copy(const char* data, size_t len)
{
    char* out = nullptr;
    atx::pg_guard([&] { out = static_cast<char*>(palloc(len + 1)); });
    if (len)
        std::memcpy(out, data, len);
    out[len] = '\0';
    return out;
}

char* pg_copy(const std::string& s) { return pg_copy(s.data(), s.size()); }

template <typename T>
T* pg_array(size_t n)
{
    T* out = nullptr;
    atx::pg_guard([&] { out = static_cast<T*>(palloc0(sizeof(T) * (n ? n : 1))); });
    return out;
}

}  // namespace

bool atx_encode_body(const AtxMessageC* m, char** out, size_t* out_len, atx::CaughtError* err) noexcept
{
    try {
        atx::Message msg;
        std::memcpy(msg.id.data(), m->id, 16);
        std::memcpy(msg.lane.data(), m->lane, 16);
        msg.depth = static_cast<uint8_t>(m->depth);
        msg.waited = m->waited;
        msg.cancel_if_abandoned = m->cancel_if_abandoned;
        msg.database_oid = m->database_oid;
        msg.role_oid = m->role_oid;
        msg.role_name = m->role_name;
        msg.session_role_oid = m->session_role_oid;
        msg.session_role_name = m->session_role_name ? m->session_role_name : "";
        msg.caller_xid = m->caller_xid;
        msg.emit_time = m->emit_time;
        for (int i = 0; i < m->nguc; ++i)
            msg.gucs.push_back({m->gucs[i].name, m->gucs[i].value, m->gucs[i].privileged});
        msg.statement = m->statement;
        msg.params.reserve(m->nparams);
        for (int i = 0; i < m->nparams; ++i) {
            const AtxParamC& p = m->params[i];
            atx::Param q;
            q.type_oid = p.type_oid;
            q.type_name = p.type_name;
            q.is_null = p.is_null;
            q.binary = p.binary;
            if (!p.is_null)
                q.value.assign(p.value, p.value_len);
            msg.params.push_back(std::move(q));
        }
        if (m->key)
            msg.key = std::string(m->key);
        std::string body = atx::encode_body(msg);
        *out = pg_copy(body);
        *out_len = body.size();
        return true;
    } catch (...) {
        atx::capture_exception(*err);
        return false;
    }
}

bool atx_decode_payload(const char* payload, size_t len, AtxMessageC* out, atx::CaughtError* err) noexcept
{
    try {
        atx::DecodedPayload d = atx::decode_payload(std::string_view(payload, len));
        const atx::Message& m = d.message;
        std::memset(out, 0, sizeof *out);
        out->version = m.version;
        std::memcpy(out->id, m.id.data(), 16);
        std::memcpy(out->lane, m.lane.data(), 16);
        out->depth = m.depth;
        out->waited = m.waited;
        out->cancel_if_abandoned = m.cancel_if_abandoned;
        out->database_oid = m.database_oid;
        out->role_oid = m.role_oid;
        out->role_name = pg_copy(m.role_name);
        out->session_role_oid = m.session_role_oid;
        out->session_role_name = pg_copy(m.session_role_name);
        out->caller_xid = m.caller_xid;
        out->emit_time = m.emit_time;
        out->nguc = static_cast<int>(m.gucs.size());
        out->gucs = pg_array<AtxGucC>(m.gucs.size());
        for (size_t i = 0; i < m.gucs.size(); ++i) {
            out->gucs[i].name = pg_copy(m.gucs[i].name);
            out->gucs[i].value = pg_copy(m.gucs[i].value);
            out->gucs[i].privileged = m.gucs[i].privileged;
        }
        out->statement = pg_copy(m.statement);
        out->nparams = static_cast<int>(m.params.size());
        out->params = pg_array<AtxParamC>(m.params.size());
        for (size_t i = 0; i < m.params.size(); ++i) {
            const atx::Param& p = m.params[i];
            AtxParamC& q = out->params[i];
            q.type_oid = p.type_oid;
            q.type_name = pg_copy(p.type_name);
            q.is_null = p.is_null;
            q.binary = p.binary;
            q.value = p.is_null ? nullptr : pg_copy(p.value);
            q.value_len = p.value.size();
        }
        out->key = m.key ? pg_copy(*m.key) : nullptr;
        // body and mac are views into the caller's payload.
        out->body = payload;
        out->body_len = d.body.size();
        out->mac = payload + d.body.size();
        return true;
    } catch (...) {
        atx::capture_exception(*err);
        return false;
    }
}

void atx_uuid_text(const uint8 id[16], char out[37]) noexcept
{
    static const char* hex = "0123456789abcdef";
    int j = 0;
    for (int i = 0; i < 16; ++i) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            out[j++] = '-';
        out[j++] = hex[id[i] >> 4];
        out[j++] = hex[id[i] & 0xf];
    }
    out[j] = '\0';
}
