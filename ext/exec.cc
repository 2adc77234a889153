// atx_exec / atx_exec_noraise: emit like atx_log, then wait until the applier
// has committed (or dead-lettered) the message, and return its outcome.
// atx._exec_dead_lettered: the trigger on atx.dead_letter that publishes a
// failure. See docs/exec.md.
//
// Plain C style (see pg_guard.h): PG_TRY, condition variables and ereport.
#include "codec_bridge.h"
#include "exec_shmem.h"
#include "pg_guard.h"

#define DEADLOCK_CHECK_INTERVAL_MS 100
#define MAX_BLOCKER_WALK 64

static bool exit_callback_registered = false;

static void release_slot(void)
{
    AtxExecShared* sh = atx_exec_shared();
    AtxExecSlot* s;

    if (sh == NULL || MyBackendId < 1 || MyBackendId > sh->nslots)
        return;
    s = atx_exec_slot(MyBackendId - 1);
    LWLockAcquire(sh->lock, LW_EXCLUSIVE);
    if (s->state != ATX_EXEC_FREE && s->waiter_pid == MyProcPid) {
        s->state = ATX_EXEC_FREE;
        s->waiter_pid = 0;
        pg_atomic_fetch_sub_u32(&sh->n_waiting, 1);
    }
    LWLockRelease(sh->lock);
}

static void release_slot_at_exit(int code, Datum arg)
{
    (void)code;
    (void)arg;
    release_slot();
}

static AtxExecSlot* register_waiter(const uint8 id[16])
{
    AtxExecShared* sh = atx_exec_shared();
    AtxExecSlot* s;

    if (MyBackendId < 1 || MyBackendId > sh->nslots)
        ereport(ERROR, (errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
                        errmsg("atx_exec cannot run in this process (backend id %d)", MyBackendId)));
    if (!exit_callback_registered) {
        before_shmem_exit(release_slot_at_exit, (Datum)0);
        exit_callback_registered = true;
    }
    s = atx_exec_slot(MyBackendId - 1);
    LWLockAcquire(sh->lock, LW_EXCLUSIVE);
    // A slot left by an earlier backend with this id that died is taken over.
    if (s->state == ATX_EXEC_FREE)
        pg_atomic_fetch_add_u32(&sh->n_waiting, 1);
    s->state = ATX_EXEC_WAITING;
    s->waiter_pid = MyProcPid;
    s->dboid = MyDatabaseId;
    memcpy(s->id, id, 16);
    s->has_result = false;
    s->truncated = false;
    LWLockRelease(sh->lock);
    return s;
}

// The live apply sessions of this database (pids), at most max.
static int apply_pids(int* out, int max)
{
    AtxExecShared* sh = atx_exec_shared();
    int n = 0;

    LWLockAcquire(sh->lock, LW_SHARED);
    for (int i = 0; i < ATX_EXEC_MAX_APPLY_PIDS && n < max; i++)
        if (sh->apply[i].pid != 0 && sh->apply[i].dboid == MyDatabaseId)
            out[n++] = sh->apply[i].pid;
    LWLockRelease(sh->lock);
    // Drop the ones that are gone (or whose pid now belongs to another database).
    int k = 0;
    for (int i = 0; i < n; i++) {
        PGPROC* proc = BackendPidGetProc(out[i]);
        if (proc != NULL && proc->databaseId == MyDatabaseId)
            out[k++] = out[i];
    }
    return k;
}

// Is pid blocked, directly or through a chain of other blocked backends, by
// this backend? Walks pg_blocking_pids() breadth first.
static bool blocked_by_me(int start_pid)
{
    int queue[MAX_BLOCKER_WALK];
    int head = 0, nq = 0;
    PGPROC* proc = BackendPidGetProc(start_pid);
    MemoryContext tmp, old;
    bool found = false;

    // Cheap pre-check (racy, but a backend that waits stays waiting): not
    // waiting for a heavyweight lock at all.
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

// Waits until the slot is DONE. Raises on timeout and deadlock (own_error is
// set first); statement_timeout and cancel arrive through CHECK_FOR_INTERRUPTS
// inside ConditionVariableTimedSleep.
static void wait_for_outcome(AtxExecSlot* s, const char* fname, const char* id_text, volatile bool* own_error)
{
    AtxExecShared* sh = atx_exec_shared();
    TimestampTz start = GetCurrentTimestamp();
    long next_check = DEADLOCK_CHECK_INTERVAL_MS;
    int pids[16];

    ConditionVariablePrepareToSleep(&s->cv);
    for (;;) {
        int state;
        long elapsed, sleep_ms;

        LWLockAcquire(sh->lock, LW_SHARED);
        state = s->state;
        LWLockRelease(sh->lock);
        if (state == ATX_EXEC_DONE)
            break;

        elapsed = TimestampDifferenceMilliseconds(start, GetCurrentTimestamp());
        if (atx_exec_timeout > 0 && elapsed >= atx_exec_timeout) {
            bool have_applier = apply_pids(pids, lengthof(pids)) > 0;
            *own_error = true;
            ereport(ERROR,
                    (errcode(ERRCODE_LOCK_NOT_AVAILABLE),
                     errmsg("%s timed out after %d ms waiting for pg_atx message %s", fname, atx_exec_timeout,
                            id_text),
                     errdetail("The message is durable and will still be applied (or dead-lettered) by "
                               "atx-applier; only the wait ended."),
                     have_applier ? errhint("Raise atx.exec_timeout, or look for what holds up the apply session "
                                            "(application_name 'atx-applier apply' in pg_stat_activity).")
                                  : errhint("No atx-applier apply session has connected to this database since "
                                            "the server started: is atx-applier running?")));
        }
        if (elapsed >= next_check) {
            int n = apply_pids(pids, lengthof(pids));
            for (int i = 0; i < n; i++) {
                if (blocked_by_me(pids[i])) {
                    *own_error = true;
                    ereport(ERROR,
                            (errcode(ERRCODE_T_R_DEADLOCK_DETECTED),
                             errmsg("deadlock detected: %s waits for pg_atx message %s, and the apply "
                                    "session (pid %d) is blocked by this transaction",
                                    fname, id_text, pids[i]),
                             errdetail("The message is durable: it will be applied once this transaction "
                                       "releases its locks (it commits or rolls back)."),
                             errhint("Do not lock in the caller what the autonomous statement changes; use "
                                     "atx_log for work that may wait for the caller.")));
                }
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

static void append_kv_str(StringInfo b, const char* key, const char* value)
{
    appendStringInfoString(b, ", ");
    escape_json(b, key);
    appendStringInfoString(b, ": ");
    if (value)
        escape_json(b, value);
    else
        appendStringInfoString(b, "null");
}

static Datum exec_body(FunctionCallInfo fcinfo, bool raise)
{
    uint8 id[16];
    char id_text[37];
    char* payload;
    size_t len;
    AtxExecSlot* slot;
    AtxExecSlot* outcome;
    volatile bool written = false;
    volatile bool own_error = false;
    MemoryContext ctx = CurrentMemoryContext;
    StringInfoData b;
    const char* fname = raise ? "atx_exec" : "atx_exec_noraise";

    if (!atx_exec_available())
        ereport(ERROR, (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
                        errmsg("%s requires pg_atx in shared_preload_libraries", fname),
                        errdetail("Waiting for the applier uses a shared memory segment that only a preloaded "
                                  "pg_atx can create."),
                        errhint("Add pg_atx to shared_preload_libraries and restart the server, or use atx_log, "
                                "which does not wait.")));
    if (atx_current_message() != NULL)
        ereport(ERROR, (errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
                        errmsg("%s cannot be called inside a statement that atx-applier is applying", fname),
                        errdetail("It would wait for the very apply session that runs it."),
                        errhint("Use atx_log inside autonomous statements: it does not wait.")));

    atx_build_message(fcinfo, false, id, &payload, &len);
    atx_uuid_text(id, id_text);

    // Registered before the message exists: the apply side can then never miss the waiter.
    slot = register_waiter(id);
    PG_TRY();
    {
        atx_write_message(payload, len);
        written = true;
        wait_for_outcome(slot, fname, id_text, &own_error);
    }
    PG_CATCH();
    {
        ErrorData* edata;

        ConditionVariableCancelSleep();
        if (LWLockHeldByMe(atx_exec_shared()->lock))
            LWLockRelease(atx_exec_shared()->lock);
        release_slot();
        MemoryContextSwitchTo(ctx);
        edata = CopyErrorData();
        if (!written || own_error || edata->sqlerrcode != ERRCODE_QUERY_CANCELED)
            PG_RE_THROW();
        // statement_timeout or cancel: say that the message lives on.
        FlushErrorState();
        ereport(ERROR, (errcode(edata->sqlerrcode), errmsg("%s", edata->message),
                        errdetail("%s stopped waiting for pg_atx message %s; the message is durable and will "
                                  "still be applied (or dead-lettered) by atx-applier.",
                                  fname, id_text)));
    }
    PG_END_TRY();

    // DONE: the slot is ours until released; copy what we need.
    outcome = slot;
    initStringInfo(&b);
    appendStringInfoString(&b, "{\"status\": ");
    escape_json(&b, outcome->status);
    append_kv_str(&b, "message_id", id_text);
    if (strcmp(outcome->status, "failed") == 0) {
        append_kv_str(&b, "sqlstate", unpack_sql_state(outcome->sqlerrcode));
        append_kv_str(&b, "error", outcome->error);
        append_kv_str(&b, "detail", outcome->detail[0] ? outcome->detail : NULL);
        append_kv_str(&b, "hint", outcome->hint[0] ? outcome->hint : NULL);
    } else if (strcmp(outcome->status, "applied") == 0) {
        append_kv_str(&b, "command", outcome->command);
        appendStringInfo(&b, ", \"rows\": " INT64_FORMAT, outcome->rows);
        appendStringInfoString(&b, ", \"result\": ");
        if (outcome->has_result)
            appendBinaryStringInfo(&b, outcome->result, outcome->result_len);
        else
            appendStringInfoString(&b, "null");
        if (outcome->truncated)
            appendStringInfoString(&b, ", \"result_truncated\": true");
    }
    appendStringInfoChar(&b, '}');

    if (raise && strcmp(outcome->status, "failed") == 0) {
        int code = outcome->sqlerrcode;
        char* error = pstrdup(outcome->error);
        char* detail = outcome->detail[0] ? pstrdup(outcome->detail) : NULL;
        char* hint = outcome->hint[0] ? pstrdup(outcome->hint) : NULL;
        release_slot();
        ereport(ERROR, (errcode(code), errmsg_internal("%s", error),
                        detail ? errdetail_internal("%s\nRaised by the autonomous statement of pg_atx message %s "
                                                    "(dead-lettered).",
                                                    detail, id_text)
                               : errdetail_internal("Raised by the autonomous statement of pg_atx message %s "
                                                    "(dead-lettered).",
                                                    id_text),
                        hint ? errhint("%s", hint) : 0));
    }
    release_slot();
    PG_RETURN_DATUM(DirectFunctionCall1(jsonb_in, CStringGetDatum(b.data)));
}

static Datum atx_exec_body(FunctionCallInfo fcinfo) { return exec_body(fcinfo, true); }
static Datum atx_exec_noraise_body(FunctionCallInfo fcinfo) { return exec_body(fcinfo, false); }

// AFTER INSERT FOR EACH ROW on atx.dead_letter: a dead letter is written in the
// transaction that moves the applier past the message, so its COMMIT is the
// moment a waiter may learn that the message failed for good.
static Datum dead_lettered_body(FunctionCallInfo fcinfo)
{
    TriggerData* trig = (TriggerData*)fcinfo->context;
    TupleDesc td;
    HeapTuple tup;
    bool isnull;
    Datum d;
    AtxExecOutcome o;
    const char* detail = NULL;
    const char* hint = NULL;
    char* sqlstate;

    if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_BY_INSERT(trig->tg_event) ||
        !TRIGGER_FIRED_FOR_ROW(trig->tg_event))
        elog(ERROR, "atx._exec_dead_lettered must be an AFTER INSERT FOR EACH ROW trigger");
    tup = trig->tg_trigtuple;
    td = trig->tg_relation->rd_att;
    if (!atx_exec_available())
        return PointerGetDatum(tup);

    d = SPI_getbinval(tup, td, SPI_fnumber(td, "message_id"), &isnull);
    if (isnull)
        return PointerGetDatum(tup);
    memset(&o, 0, sizeof o);
    memcpy(o.id, DatumGetUUIDP(d)->data, 16);
    if (!atx_exec_is_waited(o.id))
        return PointerGetDatum(tup);

    sqlstate = SPI_getvalue(tup, td, SPI_fnumber(td, "sqlstate"));
    o.status = "failed";
    o.sqlerrcode = (sqlstate && strlen(sqlstate) == 5)
                       ? MAKE_SQLSTATE(sqlstate[0], sqlstate[1], sqlstate[2], sqlstate[3], sqlstate[4])
                       : ERRCODE_INTERNAL_ERROR;
    o.error = SPI_getvalue(tup, td, SPI_fnumber(td, "error"));
    if (atx_exec_stashed_failure(o.id, &detail, &hint)) {
        o.detail = detail;
        o.hint = hint;
    }
    atx_exec_queue_outcome(&o);
    return PointerGetDatum(tup);
}

ATX_ENTRY(atx_exec, atx_exec_body)
ATX_ENTRY(atx_exec_noraise, atx_exec_noraise_body)
ATX_ENTRY(atx_exec_dead_lettered, dead_lettered_body)
