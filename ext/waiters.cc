// Waiting atx_exec callers in shared memory; see waiters.h for the slot life cycle.
//
// Plain C style (see pg_guard.h). Nothing here may raise while the LWLock is held, and nothing
// in the transaction callbacks may raise at all.
#include "waiters.h"

#include "codec_bridge.h"

#include "pg_guard.h"

int atx_exec_timeout = 30000;
int atx_exec_max_result_bytes = 16384;
int atx_exec_on_abandon = ATX_ABANDON_CANCEL;

static AtxWaiters* shared = NULL;
static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

// The outcome's envelope (status, id, command, error, detail, hint, all escaped) next to the rows.
static int json_capacity(void) { return atx_exec_max_result_bytes + 16384; }

static Size slot_stride(void) { return MAXALIGN(offsetof(AtxWaiterSlot, json) + (Size)json_capacity() + 1); }

static Size shared_size(void)
{
    return add_size(MAXALIGN(sizeof(AtxWaiters)), mul_size((Size)MaxBackends, slot_stride()));
}

static void waiters_shmem_request(void)
{
    if (prev_shmem_request_hook)
        prev_shmem_request_hook();
    RequestAddinShmemSpace(shared_size());
    RequestNamedLWLockTranche("pg_atx_exec", 1);
}

static void waiters_shmem_startup(void)
{
    bool found;

    if (prev_shmem_startup_hook)
        prev_shmem_startup_hook();
    LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
    shared = (AtxWaiters*)ShmemInitStruct("pg_atx_exec", shared_size(), &found);
    if (!found) {
        memset(shared, 0, shared_size());
        shared->lock = &(GetNamedLWLockTranche("pg_atx_exec"))->lock;
        pg_atomic_init_u32(&shared->n_waiting, 0);
        shared->nslots = MaxBackends;
        shared->json_capacity = json_capacity();
        shared->stride = slot_stride();
        for (int i = 0; i < shared->nslots; i++)
            ConditionVariableInit(&atx_waiter_slot(i)->cv);
    }
    LWLockRelease(AddinShmemInitLock);
}

void atx_waiters_install_shmem_hooks(void)
{
    prev_shmem_request_hook = shmem_request_hook;
    shmem_request_hook = waiters_shmem_request;
    prev_shmem_startup_hook = shmem_startup_hook;
    shmem_startup_hook = waiters_shmem_startup;
}

bool atx_waiters_available(void) { return shared != NULL; }
AtxWaiters* atx_waiters(void) { return shared; }

AtxWaiterSlot* atx_waiter_slot(int i)
{
    return (AtxWaiterSlot*)((char*)shared + MAXALIGN(sizeof(AtxWaiters)) + (Size)i * shared->stride);
}

// Caller holds the lock: the WAITING/COMMITTING/RUNNING/DONE slot of id in this database, or NULL.
static AtxWaiterSlot* find_slot(const uint8 id[16])
{
    for (int i = 0; i < shared->nslots; i++) {
        AtxWaiterSlot* s = atx_waiter_slot(i);
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
        append_kv(&b, "error", clip(o->error, sizeof(((AtxWaiterSlot*)0)->error)));
        append_kv(&b, "detail", clip(o->detail, sizeof(((AtxWaiterSlot*)0)->detail)));
        append_kv(&b, "hint", clip(o->hint, sizeof(((AtxWaiterSlot*)0)->hint)));
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

bool atx_waiter_present(const uint8 id[16])
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
    {
        AtxWaiterSlot* w = find_slot(id);
        found = w != NULL && w->state != ATX_EXEC_DONE;
    }
    LWLockRelease(shared->lock);
    return found;
}

// Ids whose slots this backend marked COMMITTING in the current transaction (reverted at
// abort), in TopTransactionContext.
static List* committing = NIL;

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
static void fill_done(AtxWaiterSlot* s, const char* status, int sqlerrcode, const char* error, const char* detail,
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

void atx_waiter_publish_now(const uint8 id[16], const char* status, int sqlerrcode, const char* error,
                            const char* detail, const char* hint, const char* json)
{
    AtxWaiterSlot* s;

    if (shared == NULL)
        return;
    LWLockAcquire(shared->lock, LW_EXCLUSIVE);
    s = find_slot(id);
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
    ListCell* lc;
    if (committing == NIL)
        return;
    LWLockAcquire(shared->lock, LW_EXCLUSIVE);
    foreach (lc, committing) {
        AtxWaiterSlot* s = find_slot((const uint8*)lfirst(lc));
        if (s != NULL && s->state == ATX_EXEC_COMMITTING)
            s->state = ATX_EXEC_WAITING;
    }
    LWLockRelease(shared->lock);
    committing = NIL;
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
                atx_waiter_publish_now(p->id, p->status, p->sqlerrcode, p->error, p->detail, p->hint, p->json);
            }
        pending = NIL;
        committing = NIL;
        break;
    case XACT_EVENT_ABORT:
    case XACT_EVENT_PARALLEL_ABORT:
        if (shared != NULL)
            revert_committing();
        pending = NIL;  // memory goes with TopTransactionContext
        committing = NIL;
        break;
    case XACT_EVENT_PARALLEL_COMMIT:
    case XACT_EVENT_PREPARE:
        pending = NIL;
        committing = NIL;
        break;
    default: break;
    }
}

static void exec_subxact_callback(SubXactEvent event, SubTransactionId mySubid, SubTransactionId parentSubid, void* arg)
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

// The decision of begin_commit / begin_running: whether a waited message may go on, and its
// slot's new state. A message whose waiter is gone (gave up, cancelled, died) goes on only when
// its caller did not ask for cancellation.
static bool begin(const uint8 id[16], bool cancel_if_abandoned, int new_state)
{
    AtxWaiterSlot* s;
    bool go_on;
    bool transitioned = false;

    if (shared == NULL)
        return !cancel_if_abandoned;
    register_callbacks();
    if (new_state == ATX_EXEC_COMMITTING) {
        // Listed before the lock (nothing may raise while it is held), unlisted below if this
        // backend did not make the transition.
        MemoryContext old = MemoryContextSwitchTo(TopTransactionContext);
        uint8* copy = (uint8*)palloc(16);
        memcpy(copy, id, 16);
        committing = lappend(committing, copy);
        MemoryContextSwitchTo(old);
    }
    LWLockAcquire(shared->lock, LW_EXCLUSIVE);
    s = find_slot(id);
    if (s != NULL && s->state == ATX_EXEC_WAITING) {
        s->state = new_state;
        go_on = true;
        transitioned = true;
    } else {
        // COMMITTING, RUNNING or DONE: an earlier copy of the same message (a nested emit
        // written again by its retried parent) is past the point of no return; the outcome goes
        // to the waiter either way. No slot: nobody waits any more.
        go_on = s != NULL || !cancel_if_abandoned;
    }
    LWLockRelease(shared->lock);
    // Only a transition of our own is reverted at abort: another backend may be committing an
    // earlier copy.
    if (new_state == ATX_EXEC_COMMITTING && !transitioned)
        committing = list_delete_last(committing);
    return go_on;
}

bool atx_waiter_begin_commit(const uint8 id[16], bool cancel_if_abandoned)
{
    return begin(id, cancel_if_abandoned, ATX_EXEC_COMMITTING);
}

bool atx_waiter_begin_running(const uint8 id[16], bool cancel_if_abandoned)
{
    return begin(id, cancel_if_abandoned, ATX_EXEC_RUNNING);
}

static char* dup_or_null(const char* s) { return s ? pstrdup(s) : NULL; }

void atx_waiter_queue_outcome(const AtxExecOutcome* o)
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

static bool exit_callback_registered = false;
static uint8 registered_id[16];
static bool registered = false;

// A backend that exits while it waits (terminated, its connection lost) stops waiting: a message
// whose caller asked for cancellation is then not applied.
static void release_at_exit(int code, Datum arg)
{
    (void)code;
    (void)arg;
    if (registered)
        (void)atx_waiter_give_up(registered_id, true);
    registered = false;
}

static int my_slot_index(void)
{
#if PG_VERSION_NUM >= 170000
    return MyProcNumber;
#else
    return MyBackendId - 1;
#endif
}

AtxWaiterSlot* atx_waiter_register(const uint8 id[16], const char* fname)
{
    AtxWaiterSlot* s;
    int i = my_slot_index();

    if (i < 0 || i >= shared->nslots)
        ereport(ERROR,
                (errcode(ERRCODE_FEATURE_NOT_SUPPORTED), errmsg("%s cannot run in this process (slot %d)", fname, i)));
    if (!exit_callback_registered) {
        before_shmem_exit(release_at_exit, (Datum)0);
        exit_callback_registered = true;
    }
    s = atx_waiter_slot(i);
    LWLockAcquire(shared->lock, LW_EXCLUSIVE);
    // A slot left by an earlier backend with this number that died is taken over.
    if (s->state == ATX_EXEC_FREE)
        pg_atomic_fetch_add_u32(&shared->n_waiting, 1);
    s->state = ATX_EXEC_WAITING;
    s->waiter_pid = MyProcPid;
    s->dboid = MyDatabaseId;
    memcpy(s->id, id, 16);
    s->json_len = 0;
    LWLockRelease(shared->lock);
    memcpy(registered_id, id, 16);
    registered = true;
    return s;
}

int atx_waiter_give_up(const uint8 id[16], bool force)
{
    AtxWaiterSlot* s;
    int state = ATX_EXEC_FREE;

    if (shared == NULL)
        return state;
    LWLockAcquire(shared->lock, LW_EXCLUSIVE);
    s = find_slot(id);
    if (s != NULL && s->waiter_pid == MyProcPid) {
        state = s->state;
        if (!force && state != ATX_EXEC_WAITING && state != ATX_EXEC_RUNNING) {
            LWLockRelease(shared->lock);
            return state;
        }
        s->state = ATX_EXEC_FREE;
        s->waiter_pid = 0;
        pg_atomic_fetch_sub_u32(&shared->n_waiting, 1);
    }
    LWLockRelease(shared->lock);
    if (memcmp(id, registered_id, 16) == 0)
        registered = false;
    return state;
}
