// Backends waiting in atx_exec for their message's outcome (waiters.cc): one slot per backend in
// shared memory (only a preloaded pg_atx has it).
//
// A slot's life:  FREE -> WAITING (registered before the message is written)
//                 WAITING -> COMMITTING (the apply backend finished the statement and will
//                            commit it: from now on the waiter cannot give up, only wait)
//                 COMMITTING -> WAITING (that transaction aborted; the message runs again)
//                 WAITING -> RUNNING (a non-atomic run began: it cannot be cancelled any more)
//                 COMMITTING/WAITING/RUNNING -> DONE (outcome published once the commit is durable)
//                 any -> FREE (the waiter took the outcome, gave up, or its backend exited)
//
// Cancellation needs no record of its own: a message whose caller asked for it
// (atx.exec_on_abandon = cancel, flag bit 2 of the message) is applied only while its waiter is
// there. The apply side decides at the commit: no WAITING slot for the message means its caller
// gave up, was cancelled, or its backend died (a server restart ends every wait), and the message
// is cancelled. Nothing to overflow, and it holds across crashes.
#pragma once

#include "atx_ext.h"

#define ATX_EXEC_FREE 0
#define ATX_EXEC_WAITING 1
#define ATX_EXEC_COMMITTING 2
#define ATX_EXEC_DONE 3
#define ATX_EXEC_RUNNING 4

// atx.exec_on_abandon
#define ATX_ABANDON_CANCEL 0
#define ATX_ABANDON_APPLY 1
extern int atx_exec_on_abandon;

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

// All fields but cv under AtxWaiters.lock.
struct AtxWaiterSlot {
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

struct AtxWaiters {
    LWLock* lock;
    pg_atomic_uint32 n_waiting;  // slots not FREE: 0 means nobody waits (the cheap check)
    int nslots;
    int json_capacity;
    Size stride;
    // followed by nslots slots of stride bytes
};

// _PG_init, only while shared_preload_libraries is processed.
void atx_waiters_install_shmem_hooks(void);
// Is the registry there (pg_atx was preloaded)?
bool atx_waiters_available(void);
AtxWaiters* atx_waiters(void);
AtxWaiterSlot* atx_waiter_slot(int i);

// The outcome as the jsonb text atx_exec returns.
char* atx_exec_outcome_json(const AtxExecOutcome* o);

// --- apply side ---------------------------------------------------------------------------------

// Does a backend wait for message id? Cheap when nobody waits.
bool atx_waiter_present(const uint8 id[16]);

// At the end of a waited message's statement, before its subtransaction is released. Returns
// false when the message must be cancelled instead of committed: cancel_if_abandoned and its
// waiter is no longer WAITING. Otherwise a WAITING slot becomes COMMITTING (reverted if this
// transaction aborts) and the waiter can no longer give up.
bool atx_waiter_begin_commit(const uint8 id[16], bool cancel_if_abandoned);
// A non-atomic worker is about to run waited message id: the same decision; the slot becomes
// RUNNING.
bool atx_waiter_begin_running(const uint8 id[16], bool cancel_if_abandoned);
// Queues an outcome for publication when the current transaction commits (discarded at abort,
// or at the abort of the subtransaction that queued it).
void atx_waiter_queue_outcome(const AtxExecOutcome* o);
// Publishes now (the outcome's commit is already durable: atx.wake).
void atx_waiter_publish_now(const uint8 id[16], const char* status, int sqlerrcode, const char* error,
                            const char* detail, const char* hint, const char* json);

// --- waiter side --------------------------------------------------------------------------------

// This backend's slot (its proc number). Raises 0A000 where there is none.
AtxWaiterSlot* atx_waiter_register(const uint8 id[16], const char* fname);
// Stops waiting for message id. A message already being committed or done is not given up
// unless force (an error is unwinding the waiter): the state is returned and the slot kept, and
// the waiter waits for the outcome. Otherwise the slot is freed; the state it had is returned.
int atx_waiter_give_up(const uint8 id[16], bool force);
