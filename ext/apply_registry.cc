// The apply registry; see apply_registry.h. SQL: atx.apply_activity(), atx.terminate_overdue().
//
// Plain C style (see pg_guard.h). Nothing may raise while the LWLock is held.
#include "apply_registry.h"

#include "apply_common.h"
#include "codec_bridge.h"
#include "pg_guard.h"
#include "spi_util.h"

extern "C" {
#include "utils/pg_lsn.h"
}

#include <signal.h>

enum SlotState {
    SLOT_FREE = 0,
    SLOT_IDLE,     // an apply backend between messages
    SLOT_RUNNING,  // running the message below
    SLOT_EXITED,   // the backend exited while running it (a record for the applier)
};

struct ApplySlot {
    int pid;
    Oid dboid;
    int state;
    XLogRecPtr lsn;
    uint8 id[16];
    Oid role;
    TimestampTz started_at;
    TimestampTz deadline;  // 0: none
    TimestampTz exited_at;
    bool terminated;  // by atx.terminate_overdue
};

struct Registry {
    LWLock* lock;
    int nslots;
    ApplySlot slots[FLEXIBLE_ARRAY_MEMBER];
};

static Registry* registry = NULL;
static int my_slot = -1;
static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

// Live backends, and as many exit records again.
static int registry_slots(void) { return 2 * MaxBackends; }

static Size registry_size(void)
{
    return add_size(offsetof(Registry, slots), mul_size((Size)registry_slots(), sizeof(ApplySlot)));
}

static void registry_shmem_request(void)
{
    if (prev_shmem_request_hook)
        prev_shmem_request_hook();
    RequestAddinShmemSpace(registry_size());
    RequestNamedLWLockTranche("pg_atx_apply", 1);
}

static void registry_shmem_startup(void)
{
    bool found;

    if (prev_shmem_startup_hook)
        prev_shmem_startup_hook();
    LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
    registry = (Registry*)ShmemInitStruct("pg_atx_apply", registry_size(), &found);
    if (!found) {
        memset(registry, 0, registry_size());
        registry->lock = &(GetNamedLWLockTranche("pg_atx_apply"))->lock;
        registry->nslots = registry_slots();
    }
    LWLockRelease(AddinShmemInitLock);
}

void atx_registry_install_shmem_hooks(void)
{
    prev_shmem_request_hook = shmem_request_hook;
    shmem_request_hook = registry_shmem_request;
    prev_shmem_startup_hook = shmem_startup_hook;
    shmem_startup_hook = registry_shmem_startup;
}

bool atx_registry_available(void) { return registry != NULL; }

// A backend that exits while running a message leaves a record of it: the applier counts the
// loss against that message (no need to guess from what the connection said).
static void leave_at_exit(int code, Datum arg)
{
    (void)code;
    (void)arg;
    if (registry == NULL || my_slot < 0)
        return;
    LWLockAcquire(registry->lock, LW_EXCLUSIVE);
    ApplySlot* s = &registry->slots[my_slot];
    if (s->pid == MyProcPid) {
        if (s->state == SLOT_RUNNING) {
            s->state = SLOT_EXITED;
            s->exited_at = GetCurrentTimestamp();
        } else {
            s->state = SLOT_FREE;
            s->pid = 0;
        }
    }
    LWLockRelease(registry->lock);
    my_slot = -1;
}

void atx_registry_join(void)
{
    int free_i = -1, oldest_exit = -1;

    if (registry == NULL || my_slot >= 0)
        return;
    LWLockAcquire(registry->lock, LW_EXCLUSIVE);
    for (int i = 0; i < registry->nslots; i++) {
        ApplySlot* s = &registry->slots[i];
        if (s->state == SLOT_FREE) {
            free_i = i;
            break;
        }
        if (s->state == SLOT_EXITED && (oldest_exit < 0 || s->exited_at < registry->slots[oldest_exit].exited_at))
            oldest_exit = i;
    }
    // No free slot: the oldest exit record goes (the applier read it long ago, or never will).
    if (free_i < 0)
        free_i = oldest_exit;
    if (free_i >= 0) {
        ApplySlot* s = &registry->slots[free_i];
        memset(s, 0, sizeof *s);
        s->pid = MyProcPid;
        s->dboid = MyDatabaseId;
        s->state = SLOT_IDLE;
        my_slot = free_i;
    }
    LWLockRelease(registry->lock);
    if (my_slot >= 0)
        before_shmem_exit(leave_at_exit, (Datum)0);
}

void atx_registry_begin(XLogRecPtr lsn, const uint8 id[16], Oid role, int deadline_ms)
{
    TimestampTz now = GetCurrentTimestamp();
    if (registry == NULL || my_slot < 0)
        return;
    LWLockAcquire(registry->lock, LW_EXCLUSIVE);
    ApplySlot* s = &registry->slots[my_slot];
    s->state = SLOT_RUNNING;
    s->lsn = lsn;
    memcpy(s->id, id, 16);
    s->role = role;
    s->started_at = now;
    s->deadline = deadline_ms > 0 ? TimestampTzPlusMilliseconds(now, deadline_ms) : 0;
    s->terminated = false;
    LWLockRelease(registry->lock);
}

void atx_registry_end(void)
{
    if (registry == NULL || my_slot < 0)
        return;
    LWLockAcquire(registry->lock, LW_EXCLUSIVE);
    registry->slots[my_slot].state = SLOT_IDLE;
    LWLockRelease(registry->lock);
}

int atx_registry_pids(int* out, int max)
{
    int n = 0, k = 0;

    if (registry == NULL)
        return 0;
    LWLockAcquire(registry->lock, LW_SHARED);
    for (int i = 0; i < registry->nslots && n < max; i++) {
        const ApplySlot* s = &registry->slots[i];
        if ((s->state == SLOT_IDLE || s->state == SLOT_RUNNING) && s->dboid == MyDatabaseId && s->pid != MyProcPid)
            out[n++] = s->pid;
    }
    LWLockRelease(registry->lock);
    for (int i = 0; i < n; i++) {
        PGPROC* proc = BackendPidGetProc(out[i]);
        if (proc != NULL && proc->databaseId == MyDatabaseId)
            out[k++] = out[i];
    }
    return k;
}

// --- SQL ----------------------------------------------------------------------------------------

static void require_registry(void)
{
    if (registry == NULL)
        ereport(ERROR,
                (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE), errmsg("pg_atx is not in shared_preload_libraries"),
                 errdetail("The apply registry lives in shared memory that only a preloaded pg_atx creates."),
                 errhint("Add pg_atx to shared_preload_libraries and restart the server.")));
}

static const char* state_name(int state)
{
    switch (state) {
    case SLOT_IDLE: return "idle";
    case SLOT_RUNNING: return "running";
    case SLOT_EXITED: return "exited";
    default: return "free";
    }
}

// atx.apply_activity(OUT pid int, OUT state text, OUT lsn pg_lsn, OUT message_id uuid,
//     OUT role_oid oid, OUT started_at timestamptz, OUT deadline timestamptz,
//     OUT exited_at timestamptz, OUT terminated boolean, OUT now timestamptz)
// The apply backends of this database and the exit records of those that died running a
// message; `now` is the server's clock, against which the deadlines count.
static Datum apply_activity_body(FunctionCallInfo fcinfo)
{
    ReturnSetInfo* rsinfo = (ReturnSetInfo*)fcinfo->resultinfo;
    ApplySlot* copy;
    int n = 0;
    TimestampTz now = GetCurrentTimestamp();

    atx_check_applier();
    require_registry();
    InitMaterializedSRF(fcinfo, 0);
    copy = (ApplySlot*)palloc(sizeof(ApplySlot) * registry->nslots);
    LWLockAcquire(registry->lock, LW_SHARED);
    for (int i = 0; i < registry->nslots; i++)
        if (registry->slots[i].state != SLOT_FREE && registry->slots[i].dboid == MyDatabaseId)
            copy[n++] = registry->slots[i];
    LWLockRelease(registry->lock);
    for (int i = 0; i < n; i++) {
        const ApplySlot* s = &copy[i];
        Datum v[10];
        bool nulls[10];
        bool has_message = s->state == SLOT_RUNNING || s->state == SLOT_EXITED;

        memset(nulls, !has_message, sizeof nulls);
        v[0] = Int32GetDatum(s->pid);
        v[1] = CStringGetTextDatum(state_name(s->state));
        nulls[0] = nulls[1] = false;
        v[2] = LSNGetDatum(s->lsn);
        v[3] = atx_uuid_datum(s->id);
        v[4] = ObjectIdGetDatum(s->role);
        v[5] = TimestampTzGetDatum(s->started_at);
        v[6] = TimestampTzGetDatum(s->deadline);
        nulls[6] = nulls[6] || s->deadline == 0;
        v[7] = TimestampTzGetDatum(s->exited_at);
        nulls[7] = s->state != SLOT_EXITED;
        v[8] = BoolGetDatum(s->terminated);
        v[9] = TimestampTzGetDatum(now);
        nulls[8] = nulls[9] = false;
        tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, v, nulls);
    }
    return (Datum)0;
}

// atx.terminate_overdue(pid int, lsn pg_lsn) RETURNS boolean: ends the apply backend pid if it
// still runs the message at lsn and its deadline has passed. The statement has already been
// cancelled at its deadline (its own timer); a statement that caught the cancel keeps running,
// and only terminating its backend ends it (a FATAL no code can catch). Checked and sent under
// the registry's lock: the backend cannot move on to another message in between, so an
// innocent message is never the one ended.
static Datum terminate_overdue_body(FunctionCallInfo fcinfo)
{
    int pid = PG_GETARG_INT32(0);
    XLogRecPtr lsn = PG_GETARG_LSN(1);
    TimestampTz now = GetCurrentTimestamp();
    bool done = false;

    atx_check_applier();
    require_registry();
    LWLockAcquire(registry->lock, LW_EXCLUSIVE);
    for (int i = 0; i < registry->nslots; i++) {
        ApplySlot* s = &registry->slots[i];
        if (s->pid != pid || s->dboid != MyDatabaseId || s->state != SLOT_RUNNING || s->lsn != lsn)
            continue;
        if (s->deadline != 0 && now >= s->deadline && BackendPidGetProc(pid) != NULL) {
            if (kill(pid, SIGTERM) == 0) {
                s->terminated = true;
                done = true;
            }
        }
        break;
    }
    LWLockRelease(registry->lock);
    PG_RETURN_BOOL(done);
}

ATX_ENTRY(atx_apply_activity, apply_activity_body)
ATX_ENTRY(atx_terminate_overdue, terminate_overdue_body)
