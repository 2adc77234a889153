// Plain-C view of an atx::Message, so that code calling PostgreSQL APIs never
// holds C++ objects with destructors (see pg_guard.h). Strings live in palloc'd
// memory of CurrentMemoryContext and are NUL-terminated; parameter values also
// carry a length because binary values may contain zero bytes.
#pragma once

#include "pg_guard.h"

struct AtxGucC {
    const char* name;
    const char* value;
    bool privileged;  // set with superuser rights in the caller's session
};

struct AtxParamC {
    Oid type_oid;
    const char* type_name;
    bool is_null;
    bool binary;  // value is the type's send() output, else its output() text
    const char* value;
    size_t value_len;
};

struct AtxMessageC {
    int version;  // as decoded (1 to 3); encoding always writes the current version
    uint8 id[16];
    uint8 lane[16];            // ordering lane (see common/message.h); zero for version 1
    int depth;                 // nesting depth, 0: emitted by a client session
    bool waited;               // an atx_exec caller waits for the outcome
    bool cancel_if_abandoned;  // ... and asked for cancellation when it stops waiting (version 3)
    Oid database_oid;
    Oid role_oid;
    const char* role_name;
    Oid session_role_oid;           // the principal (common/message.h); InvalidOid for version 1
    const char* session_role_name;  // "" for version 1
    uint64 caller_xid;              // top-level FullTransactionId, 0 if none
    int64 emit_time;                // TimestampTz
    int nguc;
    AtxGucC* gucs;
    const char* statement;
    int nparams;
    AtxParamC* params;
    const char* key;  // NULL: no idempotency key
    // Set by atx_decode_payload only: the bytes the MAC covers, and the MAC
    // (both point into the payload passed in).
    const char* body;
    size_t body_len;
    const char* mac;
};

// Serialises m without MAC into a palloc'd buffer. Returns false and fills err
// (sqlstate + message) when a field does not fit the format.
bool atx_encode_body(const AtxMessageC* m, char** out, size_t* out_len, atx::CaughtError* err) noexcept;

// Splits and decodes a payload (no MAC check). Returns false and fills err:
// 22P03 malformed, 0A000 unknown version.
bool atx_decode_payload(const char* payload, size_t len, AtxMessageC* out, atx::CaughtError* err) noexcept;

// "xxxxxxxx-xxxx-..." into a 37-byte buffer.
void atx_uuid_text(const uint8 id[16], char out[37]) noexcept;
