// atx_exec's shared memory: one waiter slot per backend, the apply sessions of
// each database, and the apply side's outcome queue published at COMMIT.
//
// Plain C style (see pg_guard.h). Nothing here may raise while the LWLock is
// held, and nothing in the commit callback may raise at all.
#include "exec_shmem.h"
#include "pg_guard.h"

int atx_exec_timeout = 30000;
int atx_exec_max_result_bytes = 16384;

static AtxExecShared* shared = NULL;
static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

static Size slot_stride(void)
{
    return MAXALIGN(offsetof(AtxExecSlot, result) + (Size)atx_exec_max_result_bytes + 1);
}

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
        shared->max_result = atx_exec_max_result_bytes;
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
int atx_exec_result_capacity(void) { return shared ? shared->max_result : 0; }

AtxExecSlot* atx_exec_slot(int i)
{
    return (AtxExecSlot*)((char*)shared + MAXALIGN(sizeof(AtxExecShared)) + (Size)i * shared->stride);
}

// ---------------------------------------------------------------------------
// Apply side

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

// Caller holds the lock.
static AtxExecSlot* find_waiter(const uint8 id[16])
{
    for (int i = 0; i < shared->nslots; i++) {
        AtxExecSlot* s = atx_exec_slot(i);
        if (s->state == ATX_EXEC_WAITING && s->dboid == MyDatabaseId && memcmp(s->id, id, 16) == 0)
            return s;
    }
    return NULL;
}

bool atx_exec_is_waited(const uint8 id[16])
{
    bool found;

    if (shared == NULL)
        return false;
    // The waiter counted itself before writing the message this backend is
    // now applying; the barrier makes sure no stale zero is read.
    pg_memory_barrier();
    if (pg_atomic_read_u32(&shared->n_waiting) == 0)
        return false;
    LWLockAcquire(shared->lock, LW_SHARED);
    found = find_waiter(id) != NULL;
    LWLockRelease(shared->lock);
    return found;
}

// Pending outcomes of the current transaction, in TopTransactionContext.
struct PendingOutcome {
    AtxExecOutcome o;
    SubTransactionId subid;
};
static List* pending = NIL;
static bool callbacks_registered = false;

static void copy_str(char* dst, size_t size, const char* src)
{
    strlcpy(dst, src ? src : "", size);
}

// Runs in the commit callback: no error may escape (none of these calls raises).
static void publish_pending(void)
{
    ListCell* lc;

    foreach (lc, pending) {
        PendingOutcome* p = (PendingOutcome*)lfirst(lc);
        AtxExecSlot* s;

        LWLockAcquire(shared->lock, LW_EXCLUSIVE);
        s = find_waiter(p->o.id);
        if (s != NULL) {
            copy_str(s->status, sizeof s->status, p->o.status);
            s->sqlerrcode = p->o.sqlerrcode;
            s->rows = p->o.rows;
            copy_str(s->command, sizeof s->command, p->o.command);
            copy_str(s->error, sizeof s->error, p->o.error);
            copy_str(s->detail, sizeof s->detail, p->o.detail);
            copy_str(s->hint, sizeof s->hint, p->o.hint);
            s->truncated = p->o.truncated;
            s->has_result = false;
            s->result_len = 0;
            if (p->o.result != NULL) {
                size_t len = strlen(p->o.result);
                if (len <= (size_t)shared->max_result) {
                    memcpy(s->result, p->o.result, len + 1);
                    s->result_len = (int)len;
                    s->has_result = true;
                } else {
                    s->truncated = true;
                }
            }
            s->state = ATX_EXEC_DONE;
        }
        LWLockRelease(shared->lock);
        if (s != NULL)
            ConditionVariableBroadcast(&s->cv);
    }
}

static void exec_xact_callback(XactEvent event, void* arg)
{
    (void)arg;
    switch (event) {
    case XACT_EVENT_COMMIT:
        // After RecordTransactionCommit and ProcArrayEndTransaction: the
        // transaction is visible to every new snapshot when the waiter wakes.
        if (pending != NIL && shared != NULL)
            publish_pending();
        pending = NIL;
        break;
    case XACT_EVENT_ABORT:
    case XACT_EVENT_PARALLEL_COMMIT:
    case XACT_EVENT_PARALLEL_ABORT:
    case XACT_EVENT_PREPARE:
        pending = NIL;  // memory goes with TopTransactionContext
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

static const char* dup_or_null(const char* s) { return s ? pstrdup(s) : NULL; }

void atx_exec_queue_outcome(const AtxExecOutcome* o)
{
    MemoryContext old;
    PendingOutcome* p;

    if (shared == NULL)
        return;
    if (!callbacks_registered) {
        RegisterXactCallback(exec_xact_callback, NULL);
        RegisterSubXactCallback(exec_subxact_callback, NULL);
        callbacks_registered = true;
    }
    old = MemoryContextSwitchTo(TopTransactionContext);
    p = (PendingOutcome*)palloc0(sizeof(PendingOutcome));
    memcpy(p->o.id, o->id, 16);
    p->o.status = pstrdup(o->status);
    p->o.sqlerrcode = o->sqlerrcode;
    p->o.command = dup_or_null(o->command);
    p->o.rows = o->rows;
    p->o.error = dup_or_null(o->error);
    p->o.detail = dup_or_null(o->detail);
    p->o.hint = dup_or_null(o->hint);
    p->o.result = dup_or_null(o->result);
    p->o.truncated = o->truncated;
    p->subid = GetCurrentSubTransactionId();
    pending = lappend(pending, p);
    MemoryContextSwitchTo(old);
}

// Not transactional on purpose: a failure's attempt is rolled back, the dead
// letter is written in a later transaction of the same session. A small ring:
// a batch may hold several failing waited messages.
#define STASH_SIZE 8
struct StashedFailure {
    bool valid;
    uint8 id[16];
    char* detail;
    char* hint;
};
static StashedFailure stash[STASH_SIZE];
static int stash_next = 0;

void atx_exec_stash_failure(const uint8 id[16], const char* detail, const char* hint)
{
    StashedFailure* f = NULL;

    for (int i = 0; i < STASH_SIZE; i++)
        if (stash[i].valid && memcmp(stash[i].id, id, 16) == 0)
            f = &stash[i];
    if (f == NULL) {
        f = &stash[stash_next];
        stash_next = (stash_next + 1) % STASH_SIZE;
    }
    if (f->detail)
        pfree(f->detail);
    if (f->hint)
        pfree(f->hint);
    f->detail = detail ? MemoryContextStrdup(TopMemoryContext, detail) : NULL;
    f->hint = hint ? MemoryContextStrdup(TopMemoryContext, hint) : NULL;
    memcpy(f->id, id, 16);
    f->valid = true;
}

bool atx_exec_stashed_failure(const uint8 id[16], const char** detail, const char** hint)
{
    for (int i = 0; i < STASH_SIZE; i++) {
        if (stash[i].valid && memcmp(stash[i].id, id, 16) == 0) {
            *detail = stash[i].detail;
            *hint = stash[i].hint;
            return true;
        }
    }
    return false;
}
