// atx_exec's shared memory (exec_shmem.cc): one waiter slot per backend, the apply sessions of
// each database (for deadlock detection), and the messages whose waiters gave up.
//
// A slot's life:  FREE -> WAITING (registered before the message is written)
//                 WAITING -> COMMITTING (the apply backend finished the statement and will
//                            commit it: from now on the waiter cannot cancel it, only wait)
//                 COMMITTING -> WAITING (that transaction aborted; the message runs again)
//                 COMMITTING/WAITING -> DONE (outcome published once the apply commit is durable)
//                 any -> FREE (the waiter took the outcome, or gave up)
// A waiter that gives up while its message is still WAITING records it as abandoned (when
// atx.exec_on_abandon = cancel): the apply side then fails it instead of committing it.
#pragma once

#include "atx_ext.h"

#define ATX_EXEC_FREE 0
#define ATX_EXEC_WAITING 1
#define ATX_EXEC_COMMITTING 2
#define ATX_EXEC_DONE 3
// A non-atomic message began running as a top-level statement: it cannot be cancelled any more
// (it may commit part of its work at any moment), and its caller may stop waiting for it.
#define ATX_EXEC_RUNNING 4

#define ATX_EXEC_MAX_APPLY_PIDS 256
#define ATX_EXEC_ABANDONED 256

// atx.exec_on_abandon
#define ATX_ABANDON_CANCEL 0
#define ATX_ABANDON_APPLY 1
extern int atx_exec_on_abandon;

// Why a waiter gave up (recorded with an abandoned message).
#define ATX_GAVE_UP_TIMEOUT 1
#define ATX_GAVE_UP_DEADLOCK 2
#define ATX_GAVE_UP_CANCEL 3

extern int atx_exec_timeout;           // atx.exec_timeout: ms, 0 = no limit of its own
extern int atx_exec_max_result_bytes;  // atx.exec_max_result_bytes: fixed at server start

// The outcome of a waited message as the waiter receives it.
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
    bool truncated;       // rows returned but larger than atx.exec_max_result_bytes
};

// All fields but cv under AtxExecShared.lock.
struct AtxExecSlot {
    ConditionVariable cv;
    int state;
    int waiter_pid;
    Oid dboid;
    uint8 id[16];
    // outcome (state DONE)
    char status[16];
    int sqlerrcode;
    char error[1024];
    char detail[1024];
    char hint[512];
    int json_len;
    char json[FLEXIBLE_ARRAY_MEMBER];  // the jsonb atx_exec returns, as text
};

struct AtxApplyPid {
    Oid dboid;
    int pid;
};

struct AtxAbandoned {
    Oid dboid;  // InvalidOid: unused
    uint8 id[16];
    int reason;  // ATX_GAVE_UP_*
};

struct AtxExecShared {
    LWLock* lock;
    pg_atomic_uint32 n_waiting;  // slots not FREE: 0 means nobody waits (the cheap check)
    int nslots;
    int json_capacity;
    Size stride;
    int next_abandoned;
    AtxApplyPid apply[ATX_EXEC_MAX_APPLY_PIDS];
    AtxAbandoned abandoned[ATX_EXEC_ABANDONED];
    // followed by nslots slots of stride bytes
};

// _PG_init, only while shared_preload_libraries is processed.
void atx_exec_install_shmem_hooks(void);
// Is the registry there (pg_atx was preloaded)?
bool atx_exec_available(void);
AtxExecShared* atx_exec_shared(void);
AtxExecSlot* atx_exec_slot(int i);
// Caller holds the lock: the WAITING/COMMITTING/DONE slot of id in this database, or NULL.
AtxExecSlot* atx_exec_find_slot(const uint8 id[16]);

// The outcome as the jsonb text atx_exec returns (id_text: the message id).
char* atx_exec_outcome_json(const AtxExecOutcome* o);

// --- apply side ---------------------------------------------------------------------------------

// Records this backend as an apply session of its database (for deadlock detection).
void atx_exec_note_apply_backend(void);
// Does a backend wait for message id? Cheap when nobody waits.
bool atx_exec_is_waited(const uint8 id[16]);
// Did the caller of waited message id give up and ask for cancellation (*reason)?
bool atx_exec_abandoned(const uint8 id[16], int* reason);
// At the end of a waited message's statement, before its subtransaction is released: true
// when its waiter gave up and asked for cancellation (*reason: ATX_GAVE_UP_*); otherwise the
// slot is marked COMMITTING (reverted if this transaction aborts).
bool atx_exec_begin_commit(const uint8 id[16], int* reason);
// A non-atomic worker is about to run waited message id: true when its waiter gave up and asked
// for cancellation (*reason); otherwise the slot is marked RUNNING.
bool atx_exec_begin_running(const uint8 id[16], int* reason);
// Queues an outcome for publication when the current transaction commits (discarded at abort,
// or at the abort of the subtransaction that queued it).
void atx_exec_queue_outcome(const AtxExecOutcome* o);
// Publishes now (the outcome's commit is already durable: atx.wake).
void atx_exec_publish_now(const uint8 id[16], const char* status, int sqlerrcode, const char* error,
                          const char* detail, const char* hint, const char* json);

// --- waiter side --------------------------------------------------------------------------------

// Gives up on message id. A message already being committed (COMMITTING) or done is not given
// up unless force (an error is unwinding the waiter): the state is returned and the slot kept,
// and the waiter waits for the outcome. Otherwise the slot is freed and, with
// atx.exec_on_abandon = cancel and the message still WAITING, it is recorded as abandoned (a
// RUNNING one cannot be cancelled any more: it goes on without its waiter).
int atx_exec_give_up(const uint8 id[16], int reason, bool force);
