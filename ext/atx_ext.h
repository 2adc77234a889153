// Declarations shared by the files of pg_atx.so.
#pragma once

#include "pg_headers.h"

// GUCs (module.cc).
extern char* atx_capture_gucs;    // atx.capture_gucs: extra GUC names to capture
extern int atx_max_payload_size;  // atx.max_payload_size: bytes, MAC included

// The GUCs every message captures, before atx.capture_gucs.
extern const char* const atx_default_gucs[];
extern const int atx_n_default_gucs;

// Replication origin "pg_atx" (origin.cc). Requires a transaction.
// missing_ok=false raises 55000 with a hint when the origin does not exist.
RepOriginId atx_emit_origin_id(bool missing_ok);

// Slot check (slot_check.cc): is there an in-use, valid logical slot with
// plugin pg_atx for this database?
bool atx_have_slot_for_database(Oid dboid);

// 32-byte HMAC key (hmac_key.cc), loaded or created on first use.
#define ATX_KEY_LEN 32
const uint8* atx_hmac_key(void);
// HMAC-SHA256 of data under the cluster key into out[32].
void atx_hmac_sha256(const char* data, size_t len, uint8 out[32]);
// Constant-time comparison of two 32-byte MACs.
bool atx_mac_equal(const uint8* a, const uint8* b);

// The message atx.apply_message is executing (current_message.cc), read by
// atx.current_message(). apply.cc saves the previous state before its PG_TRY,
// sets it right before the statement runs and restores the saved state after
// it, on success and in PG_CATCH (a nested atx.apply inside a statement then
// leaves the outer message current again). The strings are not copied: they
// must stay valid while the message is current. A top-level commit or abort
// clears it in any case.
struct AtxCurrentMessage {
    bool active;
    uint8 id[16];
    Oid role_oid;
    const char* role_name;
    uint64 caller_xid;  // FullTransactionId, 0: the caller had none
    TimestampTz emit_time;
    const char* key;  // NULL: no idempotency key
};
void atx_current_message_save(AtxCurrentMessage* saved);
void atx_current_message_set(const uint8 id[16], Oid role_oid, const char* role_name, uint64 caller_xid,
                             TimestampTz emit_time, const char* key);
void atx_current_message_restore(const AtxCurrentMessage* saved);
// The message being applied, or NULL outside an apply.
const AtxCurrentMessage* atx_current_message(void);
