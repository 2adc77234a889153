// atx.apply_batch: what atx-applier calls to apply a lane's next messages. See docs/design.md.
//
// Every message is named by the LSN of its WAL record and read back from the server's own WAL
// (message_load.cc): nothing the caller of this function passes is ever executed. Each message
// is applied at most once: atx.applied records every handled message id in the same transaction
// as its effect, and a message below the horizon (atx.prune) was handled before.
//
// Each message is loaded, run and recorded in a memory context of its own, reset after it (as
// PostgreSQL's apply worker resets ApplyMessageContext): a batch of 500 megabyte-sized messages
// never holds more than one of them.
//
// SECURITY DEFINER (the extension owner writes atx.applied and atx.dead_letter, which the
// applier role may only read) with SET search_path, pinned again around the work
// (atx_apply_enter). A setting made LOCAL on the way out (synchronous_commit, when an atx_exec
// caller waits) outlives the SET clause: it is another variable.
//
// Plain C style (see pg_guard.h).
#include "applied_log.h"
#include "apply_common.h"
#include "apply_outcome.h"
#include "apply_registry.h"
#include "apply_status.h"
#include "message_load.h"
#include "parked.h"
#include "pg_guard.h"
#include "run_as_caller.h"
#include "spi_util.h"
#include "waiters.h"

extern "C" {
#include "utils/memutils.h"
#include "utils/pg_lsn.h"
}

#include <malloc.h>

#define MAX_BATCH 10000
#define MAX_REPORTED_ERROR 1000
// Free heap a backend keeps after a batch before it hands it back to the operating system.
#define TRIM_ABOVE_BYTES (32 * 1024 * 1024)

using atx::ApplyStatus;

// What the batch answers for one message (in the batch's memory context).
struct ItemResult {
    XLogRecPtr lsn;
    bool have_id;
    uint8 id[16];
    ApplyStatus status;
    int sqlerrcode;  // failures
    const char* error;
    const char* failure;
    const char* command;
    int64 rows;
};

struct BatchArgs {
    int n;
    XLogRecPtr* lsns;
    int* attempts;
    TimestampTz* first_failed;  // 0: not failed before
    int max_attempts;
    int timeout_ms;
    bool wake_at_commit;
    int budget_ms;      // after this long the batch takes no further message (0: no limit)
    bool maybe_parked;  // some message of this database is parked (parked.h)
};

// The records the batch writes at its end, in one statement each.
struct Records {
    AtxRecord* insert;
    int n_insert;
    AtxRecord* reclaim;  // cancelled messages that ran after all
    int n_reclaim;
};

static void read_args(FunctionCallInfo fcinfo, BatchArgs* a)
{
    Datum* d;
    bool* nulls;
    int n2, n3;

    for (int i = 0; i < 6; i++)
        if (PG_ARGISNULL(i))
            ereport(ERROR,
                    (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED), errmsg("arguments of atx.apply_batch must not be NULL")));
    deconstruct_array(PG_GETARG_ARRAYTYPE_P(0), PG_LSNOID, sizeof(XLogRecPtr), true, TYPALIGN_DOUBLE, &d, &nulls,
                      &a->n);
    if (a->n > MAX_BATCH)
        ereport(ERROR, (errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED), errmsg("at most %d messages per batch", MAX_BATCH)));
    a->lsns = (XLogRecPtr*)palloc(sizeof(XLogRecPtr) * (a->n + 1));
    for (int i = 0; i < a->n; i++) {
        if (nulls[i])
            ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED), errmsg("an LSN of the batch is NULL")));
        a->lsns[i] = DatumGetLSN(d[i]);
    }
    deconstruct_array(PG_GETARG_ARRAYTYPE_P(1), INT4OID, 4, true, TYPALIGN_INT, &d, &nulls, &n2);
    a->attempts = (int*)palloc(sizeof(int) * (a->n + 1));
    for (int i = 0; i < a->n; i++)
        a->attempts[i] = (i < n2 && !nulls[i]) ? Max(DatumGetInt32(d[i]), 1) : 1;
    deconstruct_array(PG_GETARG_ARRAYTYPE_P(2), TIMESTAMPTZOID, sizeof(TimestampTz), true, TYPALIGN_DOUBLE, &d, &nulls,
                      &n3);
    a->first_failed = (TimestampTz*)palloc(sizeof(TimestampTz) * (a->n + 1));
    for (int i = 0; i < a->n; i++)
        a->first_failed[i] = (i < n3 && !nulls[i]) ? DatumGetTimestampTz(d[i]) : 0;
    a->max_attempts = Max(PG_GETARG_INT32(3), 1);
    a->timeout_ms = Max(PG_GETARG_INT32(4), 0);
    a->wake_at_commit = PG_GETARG_BOOL(5);
    a->budget_ms = PG_NARGS() > 7 && !PG_ARGISNULL(7) ? Max(PG_GETARG_INT32(7), 0) : 0;
}

static char* copy_in(MemoryContext cxt, const char* s) { return s ? MemoryContextStrdup(cxt, s) : NULL; }

static void done(ItemResult* r, ApplyStatus s) { r->status = s; }

static void failed(ItemResult* r, ApplyStatus s, int code, const char* error, const char* failure, MemoryContext cxt)
{
    r->status = s;
    r->sqlerrcode = code;
    r->error = copy_in(cxt, atx_bounded_text(error ? error : "", MAX_REPORTED_ERROR));
    r->failure = failure;
}

// Its record; the texts go to the batch's context (the message's is reset after it).
static AtxRecord make_record(const AtxLoaded* l, const char* status, const char* outcome, MemoryContext cxt)
{
    return atx_record(l->id, l->lsn, l->authenticated ? &l->m : NULL, status, copy_in(cxt, outcome));
}

static void add_record(Records* recs, bool reclaim, const AtxLoaded* l, const char* status, const char* outcome,
                       MemoryContext cxt)
{
    if (reclaim)
        recs->reclaim[recs->n_reclaim++] = make_record(l, status, outcome, cxt);
    else
        recs->insert[recs->n_insert++] = make_record(l, status, outcome, cxt);
}

// The outcome of a waited message: queued for its waiter at this transaction's commit, and kept
// in its record. Returns the stored text.
static const char* settle_waiter(const AtxLoaded* l, const AtxOutcome* r, const BatchArgs* a, bool* waiters)
{
    AtxExecOutcome eo;
    if (!l->authenticated || !l->m.waited)
        return NULL;
    atx_fill_exec_outcome(&eo, l->id, r);
    if (a->wake_at_commit) {
        atx_waiter_queue_outcome(&eo);
        *waiters = true;
    }
    return atx_exec_outcome_json(&eo);
}

// One message, in the per-message context `msg`; what must outlive it goes to `batch`. Returns
// false when the batch must stop after it (retry, nonatomic, rejected).
static bool apply_one(const BatchArgs* a, int i, XLogRecPtr horizon, ItemResult* res, uint8 (*seen)[16], int* n_seen,
                      Records* recs, bool* waiters, MemoryContext batch)
{
    AtxLoaded l;
    AtxOutcome r;
    char *found, *stored;
    XLogRecPtr found_lsn;
    bool reclaim = false;
    const char* outcome = NULL;
    const int attempts = a->attempts[i];
    const TimestampTz first_failed = a->first_failed[i] ? a->first_failed[i] : GetCurrentTimestamp();

    res->lsn = a->lsns[i];
    if (horizon != InvalidXLogRecPtr && res->lsn < horizon && !(a->maybe_parked && atx_parked_at(res->lsn))) {
        done(res, ApplyStatus::Already);  // handled and confirmed before; its record is pruned
        return true;
    }
    atx_load_message_from(res->lsn, a->maybe_parked, &l);
    res->have_id = l.have_id;
    memcpy(res->id, l.id, 16);
    if (l.state == ATX_LOAD_REJECTED) {
        // The applier named what is not ours (or a newer format): stop before doing anything more.
        failed(res, ApplyStatus::Rejected, l.sqlerrcode, l.error, "permanent", batch);
        return false;
    }
    if (l.state == ATX_LOAD_DEAD && !l.authenticated && atx_applied_at_lsn(l.lsn)) {
        // Handled before under the id it carries: it authenticated then, not now (the key
        // changed). Its record is by that id, which cannot be trusted now, so by position.
        done(res, ApplyStatus::Already);
        return true;
    }
    // The same id twice in one batch (a payload written again at another position): the first
    // one decides, the others were handled before.
    for (int k = 0; k < *n_seen; k++)
        if (memcmp(seen[k], l.id, 16) == 0) {
            done(res, ApplyStatus::Already);
            return true;
        }
    memcpy(seen[(*n_seen)++], l.id, 16);

    atx_applied_lookup(l.id, &found, &stored, &found_lsn);
    if (found && strcmp(found, "started") == 0) {
        // A non-atomic run began and never finished: it may have committed part of its work.
        atx_dead_letter_write(atx_loaded_view(&l), l.lsn, l.payload, l.len, ERRCODE_T_R_STATEMENT_COMPLETION_UNKNOWN,
                              atx_in_doubt_text(), NULL, atx_in_doubt_hint(), attempts, first_failed);
        failed(res, ApplyStatus::Dead, ERRCODE_T_R_STATEMENT_COMPLETION_UNKNOWN, atx_in_doubt_text(), "in doubt",
               batch);
        {
            AtxRecord one = make_record(&l, "dead", NULL, batch);
            atx_applied_update(1, &one);  // it says 'started'
        }
        return true;
    }
    if (found && strcmp(found, "parked") == 0) {
        // Parked (by the applier, so that the slot could move on): its run replaces the record.
        reclaim = true;
    } else if (found && strcmp(found, "cancelled") == 0 && l.authenticated && l.m.waited && found_lsn != l.lsn &&
               atx_waiter_present(l.id)) {
        // Cancelled before, never applied, and written again by a caller that waits for it now
        // (a nested atx_exec of a parent that runs again): it runs.
        reclaim = true;
        atx_dead_letter_forget(l.id);
    } else if (found) {
        done(res, ApplyStatus::Already);
        if (a->wake_at_commit)
            atx_publish_stored(l.id, stored);
        return true;
    }

    if (l.state == ATX_LOAD_DEAD) {
        atx_dead_letter_write(atx_loaded_view(&l), l.lsn, l.payload, l.len, l.sqlerrcode, l.error, NULL, NULL, attempts,
                              first_failed);
        // A payload that did not decode or authenticate: nothing of it may be trusted.
        failed(res, ApplyStatus::Dead, l.sqlerrcode, l.error, l.authenticated ? "permanent" : "unauthenticated", batch);
        add_record(recs, reclaim, &l, "dead", NULL, batch);
        return true;
    }

    if (l.m.waited && l.m.cancel_if_abandoned && !atx_waiter_present(l.id)) {
        // Its caller stopped waiting before it ran (atx.exec_on_abandon = cancel): not run.
        memset(&r, 0, sizeof r);
        r.status = "failed";
        r.failure = ATX_FAIL_CANCELLED;
        r.sqlerrcode = ERRCODE_QUERY_CANCELED;
        r.error = (char*)atx_cancelled_text();
    } else {
        atx_execute_message(&l.m, l.lsn, a->timeout_ms, &r);
    }

    if (strcmp(r.status, "failed") != 0) {
        done(res, strcmp(r.status, "duplicate") == 0 ? ApplyStatus::Duplicate : ApplyStatus::Applied);
        res->command = copy_in(batch, r.command);
        res->rows = r.rows;
    } else if (r.failure == ATX_FAIL_NONATOMIC) {
        failed(res, ApplyStatus::Nonatomic, r.sqlerrcode, r.error, atx_failure_name(r.failure), batch);
        return false;
    } else if (r.failure == ATX_FAIL_TRANSIENT && attempts < a->max_attempts) {
        failed(res, ApplyStatus::Retry, r.sqlerrcode, r.error, atx_failure_name(r.failure), batch);
        return false;
    } else {
        const char* error = r.error;
        if (r.failure == ATX_FAIL_TRANSIENT)
            error = psprintf("%s (transient, gave up after %d attempts)", r.error, attempts);
        atx_dead_letter_write(&l.m, l.lsn, l.payload, l.len, r.sqlerrcode, error, r.detail, r.hint, attempts,
                              first_failed);
        failed(res, ApplyStatus::Dead, r.sqlerrcode, error, atx_failure_name(r.failure), batch);
    }
    outcome = settle_waiter(&l, &r, a, waiters);
    add_record(recs, reclaim, &l,
               res->status == ApplyStatus::Dead ? (r.failure == ATX_FAIL_CANCELLED ? "cancelled" : "dead")
                                                : apply_status_name(res->status),
               outcome, batch);
    return true;
}

// Applies the batch in order. Returns whether a waited message's outcome awaits this
// transaction's commit.
static bool apply_items(const BatchArgs* a, ItemResult* results)
{
    MemoryContext batch = CurrentMemoryContext;
    MemoryContext msg = AllocSetContextCreate(batch, "pg_atx message", ALLOCSET_DEFAULT_SIZES);
    XLogRecPtr horizon = atx_applied_horizon();
    uint8(*seen)[16] = (uint8(*)[16])palloc0(16 * (a->n + 1));
    int n_seen = 0;
    Records recs;
    bool waiters = false;
    bool go_on = true;
    const TimestampTz started = GetCurrentTimestamp();

    recs.insert = (AtxRecord*)palloc0(sizeof(AtxRecord) * (a->n + 1));
    recs.reclaim = (AtxRecord*)palloc0(sizeof(AtxRecord) * (a->n + 1));
    recs.n_insert = recs.n_reclaim = 0;
    for (int i = 0; i < a->n; i++) {
        if (!go_on) {
            results[i].lsn = a->lsns[i];
            done(&results[i], ApplyStatus::Skipped);
            continue;
        }
        MemoryContextSwitchTo(msg);
        go_on = apply_one(a, i, horizon, &results[i], seen, &n_seen, &recs, &waiters, batch);
        MemoryContextSwitchTo(batch);
        MemoryContextReset(msg);
        // A slow batch stops taking messages: the rest go back to their lane, where the applier
        // can park them instead of holding the slot for all of them (parked.h).
        if (go_on && a->budget_ms > 0 && TimestampDifferenceExceeds(started, GetCurrentTimestamp(), a->budget_ms))
            go_on = false;
    }
    atx_applied_record(recs.n_insert, recs.insert);
    atx_applied_reclaim(recs.n_reclaim, recs.reclaim);
    MemoryContextDelete(msg);
    return waiters;
}

// Bytes this backend holds: what PostgreSQL's memory contexts allocated, or what the C heap
// holds if more (freed memory the allocator kept). The applier recycles a session above its
// bound; here, free heap above TRIM_ABOVE_BYTES is returned to the operating system first.
static int64 backend_bytes(void)
{
    Size contexts = MemoryContextMemAllocated(TopMemoryContext, true);
#ifdef __GLIBC__
    struct mallinfo2 mi = mallinfo2();
    if (mi.fordblks > TRIM_ABOVE_BYTES) {
        malloc_trim(0);
        mi = mallinfo2();
    }
    return (int64)Max(contexts, mi.arena + mi.hblkhd);
#else
    return (int64)contexts;
#endif
}

static Datum apply_batch_body(FunctionCallInfo fcinfo)
{
    ReturnSetInfo* rsinfo = (ReturnSetInfo*)fcinfo->resultinfo;
    BatchArgs a;
    ItemResult* results;
    bool waiters;
    int64 bytes;
    TimestampTz started;
    static uint64 batches = 0;

    InitMaterializedSRF(fcinfo, 0);
    AtxApplyFrame f = atx_apply_enter();
    // With pg_atx preloaded, what this backend runs is visible to the applier's watchdog
    // (apply_registry.h); atx-applier refuses to work without it, a call by hand works either way.
    atx_registry_join();
    read_args(fcinfo, &a);
    a.maybe_parked = atx_parked_any();
    results = (ItemResult*)palloc0(sizeof(ItemResult) * (a.n + 1));
    started = GetCurrentTimestamp();
    waiters = apply_items(&a, results);
    // Walking every memory context costs more than a small batch: measured after a batch that
    // took long enough to have grown the backend (a huge statement does), and every 16th.
    bytes =
        (++batches % 16 == 0 || TimestampDifferenceExceeds(started, GetCurrentTimestamp(), 20)) ? backend_bytes() : -1;
    for (int i = 0; i < a.n; i++) {
        ItemResult* it = &results[i];
        Datum v[9];
        bool nulls[9];

        memset(nulls, true, sizeof nulls);
        v[0] = LSNGetDatum(it->lsn);
        nulls[0] = false;
        if (it->have_id) {
            v[1] = atx_uuid_datum(it->id);
            nulls[1] = false;
        }
        v[2] = CStringGetTextDatum(apply_status_name(it->status));
        nulls[2] = false;
        if (it->sqlerrcode != 0) {
            v[3] = CStringGetTextDatum(unpack_sql_state(it->sqlerrcode));
            v[4] = CStringGetTextDatum(it->error ? it->error : "");
            nulls[3] = nulls[4] = false;
        }
        if (it->failure) {
            v[5] = CStringGetTextDatum(it->failure);
            nulls[5] = false;
        }
        if (it->command) {
            v[6] = CStringGetTextDatum(it->command);
            v[7] = Int64GetDatum(it->rows);
            nulls[6] = nulls[7] = false;
        }
        v[8] = Int64GetDatum(bytes);
        nulls[8] = bytes < 0;  // not measured this time
        tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, v, nulls);
    }
    atx_apply_leave(&f);
    // Whoever waits is woken only once this commit is durable (on this server and, when
    // configured, on the synchronous standbys): the commit of this transaction is synchronous.
    if (waiters)
        (void)set_config_option("synchronous_commit", "on", PGC_USERSET, PGC_S_SESSION, GUC_ACTION_LOCAL, true, 0,
                                false);
    return (Datum)0;
}

// The 0.2 signature, kept so that an atx-applier older than this extension is told what to do
// instead of "function does not exist".
static Datum apply_batch_old_body(FunctionCallInfo fcinfo)
{
    ereport(ERROR,
            (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
             errmsg("this atx-applier speaks pg_atx 0.2 and cannot apply the messages of extension pg_atx %s",
                    ATX_EXTENSION_VERSION),
             errdetail("It called the atx.apply_batch of pg_atx 0.2."),
             errhint("Upgrade atx-applier to %s or later and restart it (docs/upgrade.md).", ATX_EXTENSION_VERSION)));
    PG_RETURN_NULL();
}

ATX_ENTRY(atx_apply_batch, apply_batch_body)
ATX_ENTRY(atx_apply_batch_v2, apply_batch_old_body)
