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

// Message building and writing (emit.cc), shared by atx_log and atx_exec.
// atx_build_message runs every refusal of atx_log, then builds and signs the
// message of fcinfo (statement at argument keyed ? 1 : 0, parameters after it)
// without writing it; atx_write_message writes and flushes a signed payload.
void atx_build_message(FunctionCallInfo fcinfo, bool keyed, uint8 id_out[16], char** payload_out, size_t* len_out);
XLogRecPtr atx_write_message(const char* payload, size_t len);

// atx_exec (exec.cc, exec_shmem.cc; docs/exec.md).
extern int atx_exec_timeout;           // atx.exec_timeout: ms, 0 = no limit of its own
extern int atx_exec_max_result_bytes;  // atx.exec_max_result_bytes: per waiter, fixed at server start

// _PG_init, only while shared_preload_libraries is processed: installs the
// shmem request/startup hooks of the waiter registry.
void atx_exec_install_shmem_hooks(void);
// Is the waiter registry there (pg_atx was preloaded)?
bool atx_exec_available(void);

// Apply side. atx_exec_note_apply_backend records this backend as an apply
// session of its database (for deadlock detection); atx_exec_is_waited says
// whether a backend waits for message id (cheap when nobody waits).
void atx_exec_note_apply_backend(void);
bool atx_exec_is_waited(const uint8 id[16]);
int atx_exec_result_capacity(void);

// An outcome queued for publication at the COMMIT of the current transaction
// (discarded at abort, or at the abort of the subtransaction that queued it).
struct AtxExecOutcome {
    uint8 id[16];
    const char* status;   // "applied", "duplicate", "failed"
    int sqlerrcode;       // failed
    const char* command;  // applied
    int64 rows;           // applied
    const char* error;    // failed
    const char* detail;   // failed, may be NULL
    const char* hint;     // failed, may be NULL
    const char* result;   // JSON array text of the returned rows, NULL: none
    bool truncated;       // rows returned but larger than the capacity
};
void atx_exec_queue_outcome(const AtxExecOutcome* o);
// Detail and hint of the last failure of a waited message in this backend,
// picked up when it is dead-lettered (the dead-letter row has no room for them).
void atx_exec_stash_failure(const uint8 id[16], const char* detail, const char* hint);
bool atx_exec_stashed_failure(const uint8 id[16], const char** detail, const char** hint);
