// atx_exec / atx_exec_noraise: emit like atx_log, then wait until the applier has committed
// (or dead-lettered) the message durably, and return its outcome. See docs/exec.md.
//
// Nesting: a statement being applied may call atx_exec; its message gets a lane of its own
// (the parent's id) and another apply session serves it. A wait that can never end is refused
// or detected: more than 16 levels (54001), or a deadlock with the caller (40P01).
//
// Giving up (timeout, deadlock, cancel, the session ending): with atx.exec_on_abandon = cancel
// (the default, carried in the message) a message that has not begun to commit is cancelled:
// the apply side finds no waiter and dead-letters it (57014) instead of committing it, as Oracle
// never applies the autonomous change after ORA-00060.
//
// Plain C style (see pg_guard.h): PG_TRY, condition variables and ereport.
#include "apply_registry.h"
#include "codec_bridge.h"
#include "emit.h"
#include "exec_wait.h"
#include "pg_guard.h"
#include "waiters.h"

#define DEADLOCK_CHECK_INTERVAL_MS 100
#define MAX_BLOCKER_WALK 64

// Is pid blocked, directly or through a chain of other blocked backends, by this backend?
// Walks pg_blocking_pids() breadth first.
static bool blocked_by_me(int start_pid)
{
    int queue[MAX_BLOCKER_WALK];
    int head = 0, nq = 0;
    PGPROC* proc = BackendPidGetProc(start_pid);
    MemoryContext tmp, old;
    bool found = false;

    // Cheap pre-check (racy, but a backend that waits stays waiting): not waiting for a
    // heavyweight lock at all.
    if (proc == NULL || proc->waitLock == NULL)
        return false;
    tmp = AllocSetContextCreate(CurrentMemoryContext, "atx_exec deadlock check", ALLOCSET_SMALL_SIZES);
    old = MemoryContextSwitchTo(tmp);
    queue[nq++] = start_pid;
    while (head < nq && !found) {
        int pid = queue[head++];
        ArrayType* a = DatumGetArrayTypeP(DirectFunctionCall1(pg_blocking_pids, Int32GetDatum(pid)));
        int n = ArrayGetNItems(ARR_NDIM(a), ARR_DIMS(a));
        const int32* blockers = (const int32*)ARR_DATA_PTR(a);
        for (int i = 0; i < n; i++) {
            bool seen = false;
            if (blockers[i] == MyProcPid) {
                found = true;
                break;
            }
            for (int j = 0; j < nq; j++)
                if (queue[j] == blockers[i])
                    seen = true;
            if (!seen && nq < MAX_BLOCKER_WALK)
                queue[nq++] = blockers[i];
        }
    }
    MemoryContextSwitchTo(old);
    MemoryContextDelete(tmp);
    return found;
}

static int slot_state(AtxWaiterSlot* s)
{
    AtxWaiters* sh = atx_waiters();
    int state;
    LWLockAcquire(sh->lock, LW_SHARED);
    state = s->state;
    LWLockRelease(sh->lock);
    return state;
}

// What the caller is told about its message when the wait ends without an outcome.
static const char* fate_detail(int state_seen, const char* fname, const char* id_text)
{
    if (state_seen == ATX_EXEC_WAITING && atx_exec_on_abandon == ATX_ABANDON_CANCEL)
        return psprintf("pg_atx message %s is cancelled: it will not be applied, and its dead letter "
                        "(SQLSTATE 57014) records why. Set atx.exec_on_abandon = apply to have it applied later "
                        "instead.",
                        id_text);
    if (state_seen == ATX_EXEC_WAITING)
        return psprintf("pg_atx message %s is durable and will still be applied (or dead-lettered) by atx-applier "
                        "(atx.exec_on_abandon = apply); only the wait ended.",
                        id_text);
    if (state_seen == ATX_EXEC_RUNNING)
        return psprintf("pg_atx message %s was already running as a top-level statement (it needs one: a "
                        "transaction control statement or a command such as CREATE INDEX CONCURRENTLY inside) and "
                        "cannot be cancelled: it goes on, and is applied or dead-lettered.",
                        id_text);
    return psprintf("%s stopped waiting while pg_atx message %s was being committed: it is applied.", fname, id_text);
}

// Waits until the slot is DONE. Gives up on timeout and on a deadlock with an apply session,
// unless the message is already being committed (then the outcome follows in moments).
// statement_timeout and cancel arrive through CHECK_FOR_INTERRUPTS inside
// ConditionVariableTimedSleep and are handled by the caller's PG_CATCH.
static void wait_for_outcome(AtxWaiterSlot* s, const uint8 id[16], const char* fname, const char* id_text)
{
    TimestampTz start = GetCurrentTimestamp();
    long next_check = DEADLOCK_CHECK_INTERVAL_MS;
    int pids[64];

    ConditionVariablePrepareToSleep(&s->cv);
    for (;;) {
        int state = slot_state(s);
        long elapsed, sleep_ms;

        if (state == ATX_EXEC_DONE)
            break;
        elapsed = TimestampDifferenceMilliseconds(start, GetCurrentTimestamp());
        if ((state == ATX_EXEC_WAITING || state == ATX_EXEC_RUNNING) && atx_exec_timeout > 0 &&
            elapsed >= atx_exec_timeout) {
            int seen = atx_waiter_give_up(id, false);
            if (seen == ATX_EXEC_WAITING || seen == ATX_EXEC_RUNNING) {
                bool have_applier = atx_registry_pids(pids, lengthof(pids)) > 0;
                ConditionVariableCancelSleep();
                ereport(
                    ERROR,
                    (errcode(ERRCODE_LOCK_NOT_AVAILABLE),
                     errmsg("%s timed out after %d ms waiting for pg_atx message %s", fname, atx_exec_timeout, id_text),
                     errdetail_internal("%s", fate_detail(seen, fname, id_text)),
                     have_applier ? errhint("Raise atx.exec_timeout, or look for what holds up the apply sessions "
                                            "(application_name 'atx-applier apply <n>' in pg_stat_activity).")
                                  : errhint("No atx-applier apply session has connected to this database since "
                                            "the server started: is atx-applier running?")));
            }
            continue;  // being committed: the outcome is moments away
        }
        if ((state == ATX_EXEC_WAITING || state == ATX_EXEC_RUNNING) && elapsed >= next_check) {
            int n = atx_registry_pids(pids, lengthof(pids));
            for (int i = 0; i < n; i++) {
                if (!blocked_by_me(pids[i]))
                    continue;
                int seen = atx_waiter_give_up(id, false);
                if (seen != ATX_EXEC_WAITING && seen != ATX_EXEC_RUNNING)
                    break;
                ConditionVariableCancelSleep();
                ereport(ERROR, (errcode(ERRCODE_T_R_DEADLOCK_DETECTED),
                                errmsg("deadlock detected: %s waits for pg_atx message %s, and the apply session "
                                       "(pid %d) is blocked by this transaction",
                                       fname, id_text, pids[i]),
                                errdetail_internal("%s", fate_detail(seen, fname, id_text)),
                                errhint("Do not lock in the caller what the autonomous statement changes; use "
                                        "atx_log for work that may wait for the caller.")));
            }
            next_check = elapsed + DEADLOCK_CHECK_INTERVAL_MS;
        }
        sleep_ms = next_check - elapsed;
        if (atx_exec_timeout > 0 && atx_exec_timeout - elapsed < sleep_ms)
            sleep_ms = atx_exec_timeout - elapsed;
        if (sleep_ms < 1)
            sleep_ms = 1;
        (void)ConditionVariableTimedSleep(&s->cv, sleep_ms, PG_WAIT_EXTENSION);
    }
    ConditionVariableCancelSleep();
}

void atx_exec_require_preload(const char* fname)
{
    if (!atx_waiters_available())
        ereport(ERROR, (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
                        errmsg("%s requires pg_atx in shared_preload_libraries", fname),
                        errdetail("Waiting for the applier uses a shared memory segment that only a preloaded "
                                  "pg_atx can create."),
                        errhint("Add pg_atx to shared_preload_libraries and restart the server, or use atx_log, "
                                "which does not wait.")));
}

void atx_exec_write_and_wait(const char* payload, size_t len, const uint8 id[16], const char* fname, AtxExecResult* out)
{
    AtxWaiterSlot* slot;
    volatile bool written = false;
    MemoryContext ctx = CurrentMemoryContext;

    atx_uuid_text(id, out->id_text);
    // Registered before the message exists: the apply side can then never miss the waiter.
    slot = atx_waiter_register(id, fname);
    PG_TRY();
    {
        atx_write_message(payload, len, id);
        written = true;
        wait_for_outcome(slot, id, fname, out->id_text);
    }
    PG_CATCH();
    {
        ErrorData* edata;
        int seen;

        ConditionVariableCancelSleep();
        if (LWLockHeldByMe(atx_waiters()->lock))
            LWLockRelease(atx_waiters()->lock);
        seen = atx_waiter_give_up(id, true);
        MemoryContextSwitchTo(ctx);
        edata = CopyErrorData();
        if (!written || seen == ATX_EXEC_FREE || edata->sqlerrcode != ERRCODE_QUERY_CANCELED)
            PG_RE_THROW();
        // statement_timeout or cancel: say what becomes of the message.
        FlushErrorState();
        ereport(ERROR, (errcode(edata->sqlerrcode), errmsg("%s", edata->message),
                        errdetail_internal("%s", fate_detail(seen, fname, out->id_text))));
    }
    PG_END_TRY();

    // DONE: the slot is ours until released; copy what we need.
    out->json = pnstrdup(slot->json, slot->json_len);
    out->status = pstrdup(slot->status);
    out->sqlerrcode = slot->sqlerrcode;
    out->error = pstrdup(slot->error);
    out->detail = slot->detail[0] ? pstrdup(slot->detail) : NULL;
    out->hint = slot->hint[0] ? pstrdup(slot->hint) : NULL;
    (void)atx_waiter_give_up(id, true);
}

static Datum exec_body(FunctionCallInfo fcinfo, bool raise)
{
    uint8 id[16];
    char* payload;
    size_t len;
    const char* fname = raise ? "atx_exec" : "atx_exec_noraise";
    AtxExecResult r;

    atx_exec_require_preload(fname);
    atx_build_message(fcinfo, 0, false, true, fname, id, &payload, &len);
    atx_exec_write_and_wait(payload, len, id, fname, &r);

    if (raise && strcmp(r.status, "failed") == 0)
        ereport(ERROR, (errcode(r.sqlerrcode), errmsg_internal("%s", r.error),
                        r.detail ? errdetail_internal("%s\nRaised by the autonomous statement of pg_atx message %s "
                                                      "(dead-lettered).",
                                                      r.detail, r.id_text)
                                 : errdetail_internal("Raised by the autonomous statement of pg_atx message %s "
                                                      "(dead-lettered).",
                                                      r.id_text),
                        r.hint ? errhint("%s", r.hint) : 0));
    PG_RETURN_DATUM(DirectFunctionCall1(jsonb_in, CStringGetDatum(r.json)));
}

static Datum atx_exec_body(FunctionCallInfo fcinfo) { return exec_body(fcinfo, true); }
static Datum atx_exec_noraise_body(FunctionCallInfo fcinfo) { return exec_body(fcinfo, false); }

ATX_ENTRY(atx_exec, atx_exec_body)
ATX_ENTRY(atx_exec_noraise, atx_exec_noraise_body)
