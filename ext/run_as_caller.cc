// Running one verified message as its caller; see run_as_caller.h.
//
// Identity: SetUserIdAndSecContext(caller, SECURITY_RESTRICTED_OPERATION), as PostgreSQL runs
// untrusted code during maintenance and as PostgreSQL 17 runs subscription apply. SET ROLE,
// SET SESSION AUTHORIZATION and set_config('role') are refused there; so are temporary tables,
// PREPARE, LISTEN, cursors WITH HOLD, and (PostgreSQL's own limitation) queuing a deferred
// trigger. A statement that queued a deferred trigger is therefore run once more with only
// SECURITY_LOCAL_USERID_CHANGE (identity still locked), its deferred triggers fired as the
// caller before the subtransaction ends (SET CONSTRAINTS ALL IMMEDIATE), and whatever session
// state the restricted mode would have refused is then cleared as well.
//
// Session hygiene: after every message, whatever happened, the apply session forgets what the
// statement left behind: cursors, session advisory locks, lastval() and cached sequence
// values, the random seed; and after an unrestricted run also temporary tables, prepared
// statements and LISTEN registrations. A later message, of any role, starts clean.
//
// Plain C style (see pg_guard.h): subtransactions, SPI and longjmps.
#include "run_as_caller.h"

#include "apply_registry.h"
#include "current_message.h"
#include "guc_capture.h"
#include "param_binder.h"
#include "pg_guard.h"
#include "plan_cache.h"
#include "result_receiver.h"
#include "spi_util.h"
#include "waiters.h"

extern "C" {
#include "catalog/namespace.h"
#include "commands/async.h"
#include "commands/prepare.h"
#include "commands/sequence.h"
#include "executor/executor.h"
#include "storage/lock.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/fmgrprotos.h"
#include "utils/portal.h"
#include "utils/timeout.h"
#include "utils/tuplestore.h"
}

// --- the per-message time limit ------------------------------------------------------------------

static TimeoutId apply_timeout_id = MAX_TIMEOUTS;
static volatile sig_atomic_t apply_timeout_fired = false;

// Runs in the signal handler: a query cancel that the catch block recognises as ours.
static void apply_timeout_handler(void)
{
    apply_timeout_fired = true;
    QueryCancelPending = true;
    InterruptPending = true;
    SetLatch(MyLatch);
}

static void arm_timeout(int ms)
{
    apply_timeout_fired = false;
    if (ms <= 0)
        return;
    if (apply_timeout_id == MAX_TIMEOUTS)
        apply_timeout_id = RegisterTimeout(USER_TIMEOUT, apply_timeout_handler);
    enable_timeout_after(apply_timeout_id, ms);
}

static void disarm_timeout(void)
{
    if (apply_timeout_id != MAX_TIMEOUTS)
        disable_timeout(apply_timeout_id, false);
}

// The statement finished: a timer that fired in the last instant must not cancel what follows.
static void disarm_timeout_after_success(void)
{
    disarm_timeout();
    if (apply_timeout_fired) {
        apply_timeout_fired = false;
        QueryCancelPending = false;
    }
}

// Set while this file raises the cancellation of an abandoned message (a 57014 of our own).
static bool raising_abandon = false;

// --- classification ---------------------------------------------------------------------------

// Raised by procedural-language code on the user's request (RAISE ... USING ERRCODE,
// plpy.error(sqlstate=...), elog in PL/Perl or PL/Tcl): any SQLSTATE can be chosen there, so it
// says nothing about whether retrying helps.
static bool raised_by_user_code(const ErrorData* e)
{
    if (e->funcname && strcmp(e->funcname, "exec_stmt_raise") == 0)
        return true;
    if (e->filename == NULL)
        return false;
    return strncmp(e->filename, "plpy", 4) == 0 || strcmp(e->filename, "plperl.c") == 0 ||
           strcmp(e->filename, "pltcl.c") == 0 || strcmp(e->filename, "pl_exec.c") == 0;
}

static bool transient_sqlstate(int code)
{
    switch (code) {
    case ERRCODE_T_R_SERIALIZATION_FAILURE:  // 40001
    case ERRCODE_T_R_DEADLOCK_DETECTED:      // 40P01
    case ERRCODE_LOCK_NOT_AVAILABLE:         // 55P03 (lock_timeout)
    case ERRCODE_OBJECT_IN_USE:              // 55006
    case ERRCODE_ADMIN_SHUTDOWN:             // 57P01
    case ERRCODE_CRASH_SHUTDOWN:             // 57P02
    case ERRCODE_CANNOT_CONNECT_NOW:         // 57P03
    case ERRCODE_SYSTEM_ERROR:               // 58000
    case ERRCODE_IO_ERROR:                   // 58030
        return true;
    default: break;
    }
    // Whole classes: connection exceptions, insufficient resources.
    return ERRCODE_TO_CATEGORY(code) == ERRCODE_CONNECTION_EXCEPTION ||
           ERRCODE_TO_CATEGORY(code) == ERRCODE_INSUFFICIENT_RESOURCES;
}

// Errors that mean "cannot run inside a transaction block / as part of a function".
static bool needs_top_level(const ErrorData* e)
{
    return !raised_by_user_code(e) && (e->sqlerrcode == ERRCODE_INVALID_TRANSACTION_TERMINATION ||
                                       e->sqlerrcode == ERRCODE_ACTIVE_SQL_TRANSACTION);
}

// PostgreSQL refuses to queue a deferred trigger in a security-restricted operation. Recognised
// by where the server raised it and its untranslated text, which user code cannot choose (a
// RAISE has message_id "%s" and its own file): a private assumption, see design.md.
static bool deferred_trigger_refused(const ErrorData* e)
{
    return e->sqlerrcode == ERRCODE_INSUFFICIENT_PRIVILEGE && e->filename && strcmp(e->filename, "trigger.c") == 0 &&
           e->message_id && strstr(e->message_id, "deferred trigger") != NULL;
}

const char* atx_failure_name(AtxFailure f)
{
    switch (f) {
    case ATX_FAIL_NONE: return "none";
    case ATX_FAIL_PERMANENT: return "permanent";
    case ATX_FAIL_TRANSIENT: return "transient";
    case ATX_FAIL_TIMEOUT: return "timeout";
    case ATX_FAIL_NONATOMIC: return "needs top level";
    case ATX_FAIL_CANCELLED: return "cancelled";
    }
    return "unknown";
}

// --- session hygiene ----------------------------------------------------------------------------

// The cursors (portals) that were open before the first message of this transaction: not the
// messages' business, never dropped. In the applier there are none (apply_batch runs as a
// top-level query, whose portal is invisible); an operator's atx.apply() or a test may run
// inside a cursor loop or next to open cursors.
static bool portals_known = false;
static List* portals_before = NIL;  // names, in TopTransactionContext

static void forget_portals(XactEvent event, void*)
{
    if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_ABORT || event == XACT_EVENT_PARALLEL_COMMIT ||
        event == XACT_EVENT_PARALLEL_ABORT || event == XACT_EVENT_PREPARE) {
        portals_known = false;
        portals_before = NIL;
    }
}

// Names of the visible portals, as pg_cursors lists them (DECLARE, SPI, PL/pgSQL): read from
// pg_cursor() itself. Through SPI and the view this took a fifth of a message's run.
static List* portal_names(MemoryContext into)
{
    FmgrInfo flinfo;
    ReturnSetInfo rsinfo;
    LOCAL_FCINFO(fcinfo, 0);
    ExprContext* econtext = CreateStandaloneExprContext();
    TupleTableSlot* slot;
    List* names = NIL;

    fmgr_info(F_PG_CURSOR, &flinfo);
    memset(&rsinfo, 0, sizeof rsinfo);
    rsinfo.type = T_ReturnSetInfo;
    rsinfo.econtext = econtext;
    rsinfo.allowedModes = (int)SFRM_Materialize;
    InitFunctionCallInfoData(*fcinfo, &flinfo, 0, InvalidOid, NULL, (fmNodePtr)&rsinfo);
    (void)FunctionCallInvoke(fcinfo);
    if (rsinfo.returnMode != SFRM_Materialize || rsinfo.setResult == NULL || rsinfo.setDesc == NULL)
        elog(ERROR, "could not list the open cursors");
    slot = MakeSingleTupleTableSlot(rsinfo.setDesc, &TTSOpsMinimalTuple);
    while (tuplestore_gettupleslot(rsinfo.setResult, true, false, slot)) {
        bool isnull;
        Datum name = slot_getattr(slot, 1, &isnull);
        if (!isnull) {
            MemoryContext old = MemoryContextSwitchTo(into);
            names = lappend(names, TextDatumGetCString(name));
            MemoryContextSwitchTo(old);
        }
    }
    ExecDropSingleTupleTableSlot(slot);
    tuplestore_end(rsinfo.setResult);
    FreeExprContext(econtext, true);
    return names;
}

static void note_portals_before(void)
{
    static bool registered = false;
    if (portals_known)
        return;
    if (!registered) {
        RegisterXactCallback(forget_portals, NULL);
        registered = true;
    }
    // The active portal (the query running us; PQexecParams' unnamed portal is visible) is
    // never dropped anyway: only the others make this the careful case.
    {
        List* all = portal_names(TopTransactionContext);
        ListCell* lc;
        portals_before = NIL;
        foreach (lc, all) {
            Portal p = GetPortalByName((const char*)lfirst(lc));
            if (PortalIsValid(p) && p->status != PORTAL_ACTIVE) {
                MemoryContext old = MemoryContextSwitchTo(TopTransactionContext);
                portals_before = lappend(portals_before, lfirst(lc));
                MemoryContextSwitchTo(old);
            }
        }
    }
    portals_known = true;
}

static bool listed(List* names, const char* name)
{
    ListCell* lc;
    foreach (lc, names)
        if (strcmp((const char*)lfirst(lc), name) == 0)
            return true;
    return false;
}

// Drops the cursors a message left open, also WITH HOLD ones (never the active portal).
static void drop_new_portals(void)
{
    ListCell* lc;
    List* now;

    if (portals_before == NIL) {
        PortalHashTableDeleteAll();
        return;
    }
    now = portal_names(CurrentMemoryContext);
    foreach (lc, now) {
        const char* name = (const char*)lfirst(lc);
        Portal p;
        if (listed(portals_before, name))
            continue;
        p = GetPortalByName(name);
        if (PortalIsValid(p) && p->status != PORTAL_ACTIVE && !p->portalPinned)
            PortalDrop(p, false);
    }
}

// A fresh seed per message from the strong random source, drawn 64 at a time: one draw each
// cost as much as the rest of a message's setup. Every seed is used once.
static bool next_seed(uint32* r)
{
    static uint32 pool[64];
    static int left = 0;
    if (left == 0) {
        if (!pg_strong_random(pool, sizeof pool))
            return false;
        left = lengthof(pool);
    }
    *r = pool[--left];
    return true;
}

static void reset_session_state(bool unrestricted)
{
    float8 seed;
    uint32 r;

    drop_new_portals();
    LockReleaseSession(USER_LOCKMETHOD);  // pg_advisory_lock(): pg_advisory_unlock_all()
    ResetSequenceCaches();                // lastval(), currval(), cached values
    if (next_seed(&r)) {                  // setseed() of one message must not steer another's random()
        seed = ((float8)r / (float8)PG_UINT32_MAX) * 2.0 - 1.0;
        DirectFunctionCall1(setseed, Float8GetDatum(seed));
    }
    if (unrestricted) {
        // What the security-restricted mode would have refused to create.
        ResetTempTableNamespace();
        DropAllPreparedStatements();
        Async_UnlistenAll();
    }
}

// --- running the statement ----------------------------------------------------------------------

// Records the key of m for its role; false when that role (or, for keys recorded before 0.2,
// any role) applied it before. As the applier: the key table is not the caller's business.
static bool claim_key(const AtxMessageC* m)
{
    static SPIPlanPtr plan = NULL;
    Oid types[3] = {OIDOID, TEXTOID, UUIDOID};
    Datum values[3];
    pg_uuid_t* uuid = (pg_uuid_t*)palloc(sizeof(pg_uuid_t));
    int rc;

    atx_keep_plan(&plan,
                  "INSERT INTO atx.idempotency_key (role_oid, key, message_id, applied_at) "
                  "SELECT $1, $2, $3, pg_catalog.now() WHERE NOT EXISTS ("
                  "  SELECT 1 FROM atx.idempotency_key k"
                  "   WHERE k.role_oid OPERATOR(pg_catalog.=) 0"
                  "     AND k.key OPERATOR(pg_catalog.=) $2) "
                  "ON CONFLICT (role_oid, key) DO NOTHING",
                  3, types);
    memcpy(uuid->data, m->id, UUID_LEN);
    values[0] = ObjectIdGetDatum(m->role_oid);
    values[1] = CStringGetTextDatum(m->key);
    values[2] = UUIDPGetDatum(uuid);
    rc = SPI_execute_plan(plan, values, NULL, false, 0);
    if (rc != SPI_OK_INSERT)
        elog(ERROR, "could not record idempotency key: %s", SPI_result_code_string(rc));
    return SPI_processed == 1;
}

// One attempt in its own subtransaction. Returns normally with out filled (status "applied" or
// "duplicate"); an error propagates to the caller's PG_CATCH with the subtransaction still open.
static void run_once(const AtxMessageC* m, int timeout_ms, bool restricted, AtxOutcome* out, AtxResultReceiver** rr_out,
                     MemoryContext outer)
{
    Oid save_userid;
    int save_sec_context;
    Oid* types = (Oid*)palloc0(sizeof(Oid) * (m->nparams ? m->nparams : 1));
    ParamListInfo params;
    int nestlevel, rc;
    const char* tag = NULL;
    DestReceiver* dest = None_Receiver;
    AtxResultReceiver* rr = NULL;

    GetUserIdAndSecContext(&save_userid, &save_sec_context);
    if (SPI_connect() != SPI_OK_CONNECT)
        elog(ERROR, "SPI_connect failed");

    if (m->key && !claim_key(m)) {
        out->status = "duplicate";
        SPI_finish();
        return;
    }
    // The rows of a waited message go to its caller, capped while produced; nobody else's are
    // kept at all.
    if (m->waited) {
        MemoryContext old = MemoryContextSwitchTo(outer);
        rr = atx_result_receiver_create(atx_exec_max_result_bytes);
        MemoryContextSwitchTo(old);
        dest = atx_result_receiver_dest(rr);
    }

    // From here on nothing may regain the applier's identity.
    SetUserIdAndSecContext(m->role_oid, save_sec_context | SECURITY_LOCAL_USERID_CHANGE |
                                            (restricted ? SECURITY_RESTRICTED_OPERATION : 0));
    nestlevel = NewGUCNestLevel();
    atx_restore_settings(m->gucs, m->nguc, superuser_arg(m->role_oid), GUC_ACTION_SAVE);
    params = atx_bind_params(m, types);

    arm_timeout(timeout_ms);
    rc = atx_execute_cached(m, types, params, dest, &tag);
    if (rc == SPI_ERROR_TRANSACTION)
        ereport(ERROR, (errcode(ERRCODE_INVALID_TRANSACTION_TERMINATION),
                        errmsg("transaction control statements cannot run in an atomic pg_atx message")));
    if (rc == SPI_ERROR_COPY)
        ereport(ERROR, (errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
                        errmsg("COPY to or from the client is not allowed in a pg_atx message")));
    if (rc < 0)
        ereport(ERROR, (errcode(ERRCODE_INTERNAL_ERROR),
                        errmsg("could not execute pg_atx statement: %s", SPI_result_code_string(rc))));
    out->rows = (int64)SPI_processed;
    out->command = tag;
    // Deferred triggers and constraints fire now, as the caller, not at the applier's COMMIT
    // as the applier. (Only possible unrestricted: see the top of this file.)
    if (!restricted) {
        rc = atx_execute_uncached("SET CONSTRAINTS ALL IMMEDIATE", None_Receiver, &tag);
        if (rc < 0)
            elog(ERROR, "SET CONSTRAINTS failed: %s", SPI_result_code_string(rc));
    }
    disarm_timeout_after_success();

    AtEOXact_GUC(false, nestlevel);  // undo the carried settings and every SET inside
    SetUserIdAndSecContext(save_userid, save_sec_context);
    if (SPI_finish() != SPI_OK_FINISH)
        elog(ERROR, "SPI_finish failed");
    out->status = "applied";
    *rr_out = rr;
}

const char* atx_cancelled_text(void)
{
    return "cancelled: the atx_exec call waiting for this message stopped waiting (atx.exec_timeout, a deadlock with "
           "its caller, a cancel, or its session ended) before it was applied";
}

void atx_execute_message(const AtxMessageC* m, XLogRecPtr lsn, int timeout_ms, AtxOutcome* out)
{
    MemoryContext outer = CurrentMemoryContext;
    ResourceOwner oldowner = CurrentResourceOwner;
    Oid save_userid;
    int save_sec_context;
    volatile bool restricted = true;

    memset(out, 0, sizeof *out);
    GetUserIdAndSecContext(&save_userid, &save_sec_context);
    note_portals_before();
    // The applier's watchdog ends the backend if the statement outlives its limit (it is
    // cancelled at the limit first: a statement may catch that).
    atx_registry_begin(lsn, m->id, m->role_oid, timeout_ms);

    for (;;) {
        AtxCurrentMessage saved = atx_current_message_push(m, false);
        AtxResultReceiver* rr = NULL;
        volatile bool retry_unrestricted = false;

        BeginInternalSubTransaction(NULL);
        MemoryContextSwitchTo(outer);
        PG_TRY();
        {
            run_once(m, timeout_ms, restricted, out, &rr, outer);
            // A caller that stopped waiting and asked for cancellation gets it cancelled;
            // otherwise it can no longer give up: the commit follows.
            if (m->waited && strcmp(out->status, "applied") == 0 &&
                !atx_waiter_begin_commit(m->id, m->cancel_if_abandoned)) {
                raising_abandon = true;
                ereport(ERROR, (errcode(ERRCODE_QUERY_CANCELED), errmsg("%s", atx_cancelled_text()),
                                errdetail("atx.exec_on_abandon is cancel: the statement was rolled back.")));
            }
            atx_current_message_pop(&saved);
            ReleaseCurrentSubTransaction();
            MemoryContextSwitchTo(outer);
            CurrentResourceOwner = oldowner;
            if (rr != NULL)
                out->result = atx_result_receiver_json(rr, &out->truncated);
        }
        PG_CATCH();
        {
            ErrorData* edata;
            bool ours = apply_timeout_fired;
            bool abandoned = raising_abandon;

            disarm_timeout();
            apply_timeout_fired = false;
            raising_abandon = false;
            atx_current_message_pop(&saved);
            MemoryContextSwitchTo(outer);
            edata = CopyErrorData();
            FlushErrorState();
            // Also pops the GUC nest level and the SPI connection, and restores the user id
            // saved at subtransaction start.
            RollbackAndReleaseCurrentSubTransaction();
            MemoryContextSwitchTo(outer);
            CurrentResourceOwner = oldowner;
            SetUserIdAndSecContext(save_userid, save_sec_context);
            // A cancel this file did not raise (user code raising query_canceled, an
            // administrator's pg_cancel_backend, a statement_timeout the statement set) is the
            // message's own failure: nothing a statement raises is taken as word from the
            // applier. The applier never cancels a batch; it ends the backend.
            if (restricted && deferred_trigger_refused(edata)) {
                retry_unrestricted = true;
            } else {
                out->status = "failed";
                out->edata = edata;
                out->sqlerrcode = edata->sqlerrcode;
                out->error = pstrdup(edata->message ? edata->message : "unknown error");
                out->detail = edata->detail ? pstrdup(edata->detail) : NULL;
                out->hint = edata->hint ? pstrdup(edata->hint) : NULL;
                out->command = NULL;
                out->rows = 0;
                out->result = NULL;
                out->truncated = false;
                if (ours) {
                    out->failure = ATX_FAIL_TIMEOUT;
                    out->sqlerrcode = ERRCODE_QUERY_CANCELED;
                    out->error = psprintf("canceling statement due to the pg_atx apply timeout (%d ms)", timeout_ms);
                    out->detail = NULL;
                    out->hint = NULL;
                } else if (abandoned) {
                    out->failure = ATX_FAIL_CANCELLED;
                } else if (needs_top_level(edata)) {
                    out->failure = ATX_FAIL_NONATOMIC;
                } else if (transient_sqlstate(edata->sqlerrcode) && !raised_by_user_code(edata)) {
                    out->failure = ATX_FAIL_TRANSIENT;
                } else {
                    out->failure = ATX_FAIL_PERMANENT;
                }
            }
        }
        PG_END_TRY();

        reset_session_state(!restricted);
        if (!retry_unrestricted)
            break;
        restricted = false;
    }
    atx_registry_end();
}
