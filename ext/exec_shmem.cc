// atx_exec's shared memory; see exec_shmem.h for the slot life cycle.
//
// Plain C style (see pg_guard.h). Nothing here may raise while the LWLock is held, and nothing
// in the transaction callbacks may raise at all.
#include "exec_shmem.h"

#include "codec_bridge.h"

#include "pg_guard.h"

int atx_exec_timeout = 30000;
int atx_exec_max_result_bytes = 16384;
int atx_exec_on_abandon = ATX_ABANDON_CANCEL;

static AtxExecShared* shared = NULL;
static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

// The outcome's envelope (status, id, command, error, detail, hint, all escaped) next to the rows.
static int json_capacity(void) { return atx_exec_max_result_bytes + 16384; }

static Size slot_stride(void) { return MAXALIGN(offsetof(AtxExecSlot, json) + (Size)json_capacity() + 1); }

static Size shared_size(void)
{
    return add_size(MAXALIGN(sizeof(AtxExecShared)), mul_size((Size)MaxBackends, slot_stride()));
}

static void exec_shmem_request(void)
{
    if (prev_shmem_request_hook)
        prev_shmem_request_hook();
    RequestAddinShmemSpace(shared_size());
    RequestNamedLWLockTranche("pg_atx_exec", 1);
}

static void exec_shmem_startup(void)
{
    bool found;

    if (prev_shmem_startup_hook)
        prev_shmem_startup_hook();
    LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
    shared = (AtxExecShared*)ShmemInitStruct("pg_atx_exec", shared_size(), &found);
    if (!found) {
        memset(shared, 0, shared_size());
        shared->lock = &(GetNamedLWLockTranche("pg_atx_exec"))->lock;
        pg_atomic_init_u32(&shared->n_waiting, 0);
        shared->nslots = MaxBackends;
        shared->json_capacity = json_capacity();
        shared->stride = slot_stride();
        for (int i = 0; i < shared->nslots; i++)
            ConditionVariableInit(&atx_exec_slot(i)->cv);
    }
    LWLockRelease(AddinShmemInitLock);
}

void atx_exec_install_shmem_hooks(void)
{
    prev_shmem_request_hook = shmem_request_hook;
    shmem_request_hook = exec_shmem_request;
    prev_shmem_startup_hook = shmem_startup_hook;
    shmem_startup_hook = exec_shmem_startup;
}

bool atx_exec_available(void) { return shared != NULL; }
AtxExecShared* atx_exec_shared(void) { return shared; }

AtxExecSlot* atx_exec_slot(int i)
{
    return (AtxExecSlot*)((char*)shared + MAXALIGN(sizeof(AtxExecShared)) + (Size)i * shared->stride);
}

AtxExecSlot* atx_exec_find_slot(const uint8 id[16])
{
    for (int i = 0; i < shared->nslots; i++) {
        AtxExecSlot* s = atx_exec_slot(i);
        if (s->state != ATX_EXEC_FREE && s->dboid == MyDatabaseId && memcmp(s->id, id, 16) == 0)
            return s;
    }
    return NULL;
}

// --- the outcome as JSON ---------------------------------------------------------------------

static void append_kv(StringInfo b, const char* key, const char* value)
{
    appendStringInfoString(b, ", ");
    escape_json(b, key);
    appendStringInfoString(b, ": ");
    if (value)
        escape_json(b, value);
    else
        appendStringInfoString(b, "null");
}

// Texts as they fit the slot (and the waiter's error report).
static const char* clip(const char* s, size_t max)
{
    if (s == NULL || strlen(s) < max)
        return s;
    return pnstrdup(s, pg_mbcliplen(s, (int)strlen(s), (int)max - 1));
}

char* atx_exec_outcome_json(const AtxExecOutcome* o)
{
    StringInfoData b;
    char id[37];
    bool failed = strcmp(o->status, "failed") == 0;
    bool rows_fit = o->result != NULL && (int)strlen(o->result) <= atx_exec_max_result_bytes;

    atx_uuid_text(o->id, id);
    initStringInfo(&b);
    appendStringInfoString(&b, "{\"status\": ");
    escape_json(&b, o->status);
    append_kv(&b, "message_id", id);
    if (failed) {
        append_kv(&b, "sqlstate", unpack_sql_state(o->sqlerrcode));
        append_kv(&b, "error", clip(o->error, sizeof(((AtxExecSlot*)0)->error)));
        append_kv(&b, "detail", clip(o->detail, sizeof(((AtxExecSlot*)0)->detail)));
        append_kv(&b, "hint", clip(o->hint, sizeof(((AtxExecSlot*)0)->hint)));
    } else if (strcmp(o->status, "applied") == 0) {
        append_kv(&b, "command", o->command);
        appendStringInfo(&b, ", \"rows\": " INT64_FORMAT, o->rows);
        appendStringInfoString(&b, ", \"result\": ");
        appendStringInfoString(&b, rows_fit ? o->result : "null");
        if (o->truncated || (o->result != NULL && !rows_fit))
            appendStringInfoString(&b, ", \"result_truncated\": true");
    }
    appendStringInfoChar(&b, '}');
    return b.data;
}

// --- apply side ---------------------------------------------------------------------------------

void atx_exec_note_apply_backend(void)
{
    static bool noted = false;
    int free_i = -1;

    if (shared == NULL || noted)
        return;
    LWLockAcquire(shared->lock, LW_EXCLUSIVE);
    for (int i = 0; i < ATX_EXEC_MAX_APPLY_PIDS; i++) {
        AtxApplyPid* a = &shared->apply[i];
        if (a->pid == MyProcPid) {
            free_i = -2;
            a->dboid = MyDatabaseId;
            break;
        }
        // A slot of a backend that is gone (or a pid reused elsewhere) is free.
        if (free_i == -1 && (a->pid == 0 || BackendPidGetProc(a->pid) == NULL))
            free_i = i;
    }
    if (free_i >= 0) {
        shared->apply[free_i].pid = MyProcPid;
        shared->apply[free_i].dboid = MyDatabaseId;
    }
    LWLockRelease(shared->lock);
    noted = true;
}

bool atx_exec_is_waited(const uint8 id[16])
{
    bool found;

    if (shared == NULL)
        return false;
    // The waiter counted itself before writing the message this backend is now applying; the
    // barrier makes sure no stale zero is read.
    pg_memory_barrier();
    if (pg_atomic_read_u32(&shared->n_waiting) == 0)
        return false;
    LWLockAcquire(shared->lock, LW_SHARED);
    found = atx_exec_find_slot(id) != NULL;
    LWLockRelease(shared->lock);
    return found;
}

// Slots this backend marked COMMITTING in the current transaction (reverted at abort).
#define MAX_COMMITTING 64
static uint8 committing[MAX_COMMITTING][16];
static int n_committing = 0;

// Pending outcomes of the current transaction, in TopTransactionContext.
struct PendingOutcome {
    uint8 id[16];
    char* status;
    int sqlerrcode;
    char* error;
    char* detail;
    char* hint;
    char* json;
    SubTransactionId subid;
};
static List* pending = NIL;
static bool callbacks_registered = false;

static void copy_str(char* dst, size_t size, const char* src) { strlcpy(dst, src ? src : "", size); }

// Caller holds the lock exclusively.
static void fill_done(AtxExecSlot* s, const char* status, int sqlerrcode, const char* error, const char* detail,
                      const char* hint, const char* json)
{
    size_t len = json ? strlen(json) : 0;
    copy_str(s->status, sizeof s->status, status);
    s->sqlerrcode = sqlerrcode;
    copy_str(s->error, sizeof s->error, error);
    copy_str(s->detail, sizeof s->detail, detail);
    copy_str(s->hint, sizeof s->hint, hint);
    if (len > (size_t)shared->json_capacity)
        len = 0;  // cannot happen: atx_exec_outcome_json clips; the waiter then reports "no JSON"
    memcpy(s->json, json ? json : "", len);
    s->json[len] = '\0';
    s->json_len = (int)len;
    s->state = ATX_EXEC_DONE;
}

void atx_exec_publish_now(const uint8 id[16], const char* status, int sqlerrcode, const char* error,
                          const char* detail, const char* hint, const char* json)
{
    AtxExecSlot* s;

    if (shared == NULL)
        return;
    LWLockAcquire(shared->lock, LW_EXCLUSIVE);
    s = atx_exec_find_slot(id);
    if (s != NULL && s->state != ATX_EXEC_DONE)
        fill_done(s, status, sqlerrcode, error, detail, hint, json);
    else
        s = NULL;
    LWLockRelease(shared->lock);
    if (s != NULL)
        ConditionVariableBroadcast(&s->cv);
}

static void revert_committing(void)
{
    if (n_committing == 0)
        return;
    LWLockAcquire(shared->lock, LW_EXCLUSIVE);
    for (int i = 0; i < n_committing; i++) {
        AtxExecSlot* s = atx_exec_find_slot(committing[i]);
        if (s != NULL && s->state == ATX_EXEC_COMMITTING)
            s->state = ATX_EXEC_WAITING;
    }
    LWLockRelease(shared->lock);
    n_committing = 0;
}

static void exec_xact_callback(XactEvent event, void* arg)
{
    ListCell* lc;
    (void)arg;
    switch (event) {
    case XACT_EVENT_COMMIT:
        // After RecordTransactionCommit (which waited for the flush and the synchronous
        // standbys when synchronous_commit asked for it) and ProcArrayEndTransaction: the
        // outcome is visible to every new snapshot when the waiter wakes.
        if (shared != NULL)
            foreach (lc, pending) {
                PendingOutcome* p = (PendingOutcome*)lfirst(lc);
                atx_exec_publish_now(p->id, p->status, p->sqlerrcode, p->error, p->detail, p->hint, p->json);
            }
        pending = NIL;
        n_committing = 0;
        break;
    case XACT_EVENT_ABORT:
    case XACT_EVENT_PARALLEL_ABORT:
        if (shared != NULL)
            revert_committing();
        pending = NIL;  // memory goes with TopTransactionContext
        break;
    case XACT_EVENT_PARALLEL_COMMIT:
    case XACT_EVENT_PREPARE:
        pending = NIL;
        n_committing = 0;
        break;
    default:
        break;
    }
}

static void exec_subxact_callback(SubXactEvent event, SubTransactionId mySubid, SubTransactionId parentSubid,
                                  void* arg)
{
    ListCell* lc;
    (void)arg;

    if (pending == NIL)
        return;
    if (event == SUBXACT_EVENT_ABORT_SUB) {
        // Subtransaction ids grow: everything queued at or below the aborted one goes.
        foreach (lc, pending) {
            PendingOutcome* p = (PendingOutcome*)lfirst(lc);
            if (p->subid >= mySubid)
                pending = foreach_delete_current(pending, lc);
        }
    } else if (event == SUBXACT_EVENT_COMMIT_SUB) {
        foreach (lc, pending) {
            PendingOutcome* p = (PendingOutcome*)lfirst(lc);
            if (p->subid == mySubid)
                p->subid = parentSubid;
        }
    }
}

static void register_callbacks(void)
{
    if (callbacks_registered)
        return;
    RegisterXactCallback(exec_xact_callback, NULL);
    RegisterSubXactCallback(exec_subxact_callback, NULL);
    callbacks_registered = true;
}

// Caller holds the lock.
static bool find_abandoned(const uint8 id[16], int* reason)
{
    for (int i = 0; i < ATX_EXEC_ABANDONED; i++) {
        AtxAbandoned* a = &shared->abandoned[i];
        if (a->dboid == MyDatabaseId && memcmp(a->id, id, 16) == 0) {
            *reason = a->reason;
            return true;
        }
    }
    return false;
}

bool atx_exec_abandoned(const uint8 id[16], int* reason)
{
    bool found;
    if (shared == NULL)
        return false;
    LWLockAcquire(shared->lock, LW_SHARED);
    found = find_abandoned(id, reason);
    LWLockRelease(shared->lock);
    return found;
}

bool atx_exec_begin_commit(const uint8 id[16], int* reason)
{
    AtxExecSlot* s;
    bool abandoned = false;

    if (shared == NULL)
        return false;
    register_callbacks();
    LWLockAcquire(shared->lock, LW_EXCLUSIVE);
    abandoned = find_abandoned(id, reason);
    if (!abandoned) {
        s = atx_exec_find_slot(id);
        if (s != NULL && s->state == ATX_EXEC_WAITING) {
            s->state = ATX_EXEC_COMMITTING;
            if (n_committing < MAX_COMMITTING)
                memcpy(committing[n_committing++], id, 16);
        }
    }
    LWLockRelease(shared->lock);
    return abandoned;
}

bool atx_exec_begin_running(const uint8 id[16], int* reason)
{
    AtxExecSlot* s;
    bool abandoned;

    if (shared == NULL)
        return false;
    LWLockAcquire(shared->lock, LW_EXCLUSIVE);
    abandoned = find_abandoned(id, reason);
    if (!abandoned) {
        s = atx_exec_find_slot(id);
        if (s != NULL && s->state == ATX_EXEC_WAITING)
            s->state = ATX_EXEC_RUNNING;
    }
    LWLockRelease(shared->lock);
    return abandoned;
}

static char* dup_or_null(const char* s) { return s ? pstrdup(s) : NULL; }

void atx_exec_queue_outcome(const AtxExecOutcome* o)
{
    MemoryContext old;
    PendingOutcome* p;

    if (shared == NULL)
        return;
    register_callbacks();
    old = MemoryContextSwitchTo(TopTransactionContext);
    p = (PendingOutcome*)palloc0(sizeof(PendingOutcome));
    memcpy(p->id, o->id, 16);
    p->status = pstrdup(o->status);
    p->sqlerrcode = o->sqlerrcode;
    p->error = dup_or_null(o->error);
    p->detail = dup_or_null(o->detail);
    p->hint = dup_or_null(o->hint);
    p->json = atx_exec_outcome_json(o);
    p->subid = GetCurrentSubTransactionId();
    pending = lappend(pending, p);
    MemoryContextSwitchTo(old);
}

// --- waiter side --------------------------------------------------------------------------------

int atx_exec_give_up(const uint8 id[16], int reason, bool force)
{
    AtxExecSlot* s;
    int state = ATX_EXEC_FREE;

    if (shared == NULL)
        return state;
    LWLockAcquire(shared->lock, LW_EXCLUSIVE);
    s = atx_exec_find_slot(id);
    if (s != NULL && s->waiter_pid == MyProcPid) {
        state = s->state;
        if (!force && state != ATX_EXEC_WAITING && state != ATX_EXEC_RUNNING) {
            LWLockRelease(shared->lock);
            return state;
        }
        if (state == ATX_EXEC_WAITING && atx_exec_on_abandon == ATX_ABANDON_CANCEL) {
            AtxAbandoned* a = &shared->abandoned[shared->next_abandoned];
            shared->next_abandoned = (shared->next_abandoned + 1) % ATX_EXEC_ABANDONED;
            a->dboid = MyDatabaseId;
            memcpy(a->id, id, 16);
            a->reason = reason;
        }
        s->state = ATX_EXEC_FREE;
        s->waiter_pid = 0;
        pg_atomic_fetch_sub_u32(&shared->n_waiting, 1);
    }
    LWLockRelease(shared->lock);
    return state;
}
