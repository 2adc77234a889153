// The apply side's SQL entry points: atx.apply_batch (what atx-applier calls), atx.apply (by
// hand), atx.dead_letter_message, atx.wake, atx.prune, atx.unapplied, atx.message_at,
// atx.verify_payload, atx.retry_dead_letter. See docs/design.md.
//
// Every message is named by the LSN of its WAL record and read back from the server's own WAL
// (wal_message.cc): nothing the caller of these functions passes is ever executed. Each
// message is applied at most once: atx.applied records every handled message id in the same
// transaction as its effect, and a message below the horizon (atx.prune) was handled before.
//
// These functions are SECURITY DEFINER (the extension owner writes atx.applied and
// atx.dead_letter, which the applier role may only read) with SET search_path, and pin it again
// around their work (enter()). A setting made LOCAL on the way out (synchronous_commit, when an
// atx_exec caller waits) outlives the SET clause: it is another variable.
//
// Plain C style (see pg_guard.h).
#include "applied_log.h"
#include "current_message.h"
#include "exec_shmem.h"
#include "execute.h"
#include "hmac_key.h"
#include "message.h"
#include "message_json.h"
#include "name_id.h"
#include "pg_guard.h"
#include "slot_check.h"
#include "spi_util.h"
#include "wal_message.h"

extern "C" {
#include "utils/pg_lsn.h"
}

#define APPLIER_ROLE "atx_applier"
#define MAX_BATCH 10000
#define MAX_REPORTED_ERROR 1000

static const char* const kInDoubt =
    "a non-atomic message was started before and did not finish (a crash?): it may have committed part of its "
    "work, so it is not run again";
static const char* const kInDoubtHint = "Check what it did; retry it by hand (atx-applier retry) if it did nothing.";

// Only superusers and members of atx_applier may apply. The functions are SECURITY DEFINER:
// the role that called them is the outer user.
static void check_caller(void)
{
    Oid caller = GetOuterUserId();
    Oid applier;

    if (superuser_arg(caller))
        return;
    applier = get_role_oid(APPLIER_ROLE, true);
    if (OidIsValid(applier) && has_privs_of_role(caller, applier))
        return;
    ereport(ERROR, (errcode(ERRCODE_INSUFFICIENT_PRIVILEGE), errmsg("permission denied to apply pg_atx messages"),
                    errhint("Only superusers and members of role \"%s\" may apply messages.", APPLIER_ROLE)));
}

// Our own queries resolve names in pg_catalog only (they are qualified as well).
// SPI_connect makes the SPI procedure context current and SPI_finish deletes it: whatever the
// function returns (a tuple, a bytea, tuplestore rows) is made in the caller's context or copied
// into a tuplestore before leave().
struct Entry {
    int nest;
    MemoryContext caller;
};

static Entry enter(void)
{
    Entry e;
    check_caller();
    e.caller = CurrentMemoryContext;
    e.nest = NewGUCNestLevel();
    (void)set_config_option("search_path", "pg_catalog, pg_temp", PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE, true,
                            0, false);
    if (SPI_connect() != SPI_OK_CONNECT)
        elog(ERROR, "SPI_connect failed");
    return e;
}

static void leave(const Entry& e)
{
    if (SPI_finish() != SPI_OK_FINISH)
        elog(ERROR, "SPI_finish failed");
    AtEOXact_GUC(true, e.nest);
}

// A row of the caller's result type, made in the caller's context (survives leave()).
static Datum result_row(const Entry& e, TupleDesc tupdesc, Datum* v, bool* nulls)
{
    MemoryContext old = MemoryContextSwitchTo(e.caller);
    Datum d = HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(tupdesc), v, nulls));
    MemoryContextSwitchTo(old);
    return d;
}


// --- one message ------------------------------------------------------------------------------

enum ItemState {
    ITEM_PENDING,
    ITEM_DONE,  // status decided
};

struct BatchItem {
    XLogRecPtr lsn;
    int attempts;          // this attempt's number (1: first)
    TimestampTz first_failed;
    ItemState state;
    const char* status;    // returned
    int sqlerrcode;        // failures
    const char* error;
    const char* failure;
    const char* command;
    int64 rows;
    bool have_id;
    uint8 id[16];
    char* payload;
    size_t len;
    AtxMessageC m;
    bool authenticated;  // decoded and its HMAC verified: its fields may be trusted and shown
};

static void item_done(BatchItem* it, const char* status)
{
    it->state = ITEM_DONE;
    it->status = status;
}

static void item_failed(BatchItem* it, const char* status, int code, const char* error, const char* failure)
{
    item_done(it, status);
    it->sqlerrcode = code;
    it->error = error;
    it->failure = failure;
}

// Reads, decodes and authenticates the message at it->lsn. A record that is not an atx_log
// message is "rejected" (there is nothing to dead-letter); a message of ours that cannot run
// (malformed, bad MAC, role gone) is dead-lettered.
// A payload that does not authenticate is recorded (and dead-lettered) under an id of its
// position, never under the id it claims: that id may be a genuine message's.
static void unauthenticated_id(BatchItem* it)
{
    uint8 lsn[8];
    for (int i = 0; i < 8; i++)
        lsn[i] = (uint8)(it->lsn >> (56 - 8 * i));
    atx_name_id("pg_atx unauthenticated", lsn, sizeof lsn, it->id);
    it->have_id = true;
}

static void load(BatchItem* it, int* dead_code, const char** dead_error)
{
    char* why = NULL;
    atx::CaughtError err;
    uint8 mac[32];

    *dead_code = 0;
    if (!atx_read_wal_message(it->lsn, &it->payload, &it->len, &why)) {
        item_failed(it, "rejected", ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION, why, "permanent");
        return;
    }
    // The id sits at a fixed offset: known even for a message that fails to decode.
    if (it->len >= 5 + 16 && memcmp(it->payload, atx::kMagic, 3) == 0) {
        it->have_id = true;
        memcpy(it->id, it->payload + 5, 16);
    }
    if (!atx_decode_payload(it->payload, it->len, &it->m, &err)) {
        if (err.sqlerrcode == ERRCODE_FEATURE_NOT_SUPPORTED) {
            // Written by a newer pg_atx: never executed, never dropped.
            item_failed(it, "rejected", err.sqlerrcode, pstrdup(err.message), "permanent");
            return;
        }
        unauthenticated_id(it);
        *dead_code = err.sqlerrcode;
        *dead_error = pstrdup(err.message);
        return;
    }
    atx_hmac_sha256(it->m.body, it->m.body_len, mac);
    if (!atx_mac_equal(mac, (const uint8*)it->m.mac)) {
        unauthenticated_id(it);
        memcpy(it->m.id, it->id, 16);
        *dead_code = ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION;
        *dead_error = "pg_atx message authentication failed: HMAC mismatch (the key file was replaced?)";
        return;
    }
    it->authenticated = true;
    // A dropped role is an error, never a fallback to another role.
    if (!SearchSysCacheExists1(AUTHOID, ObjectIdGetDatum(it->m.role_oid))) {
        *dead_code = ERRCODE_UNDEFINED_OBJECT;
        *dead_error = psprintf("role with OID %u (\"%s\") of the pg_atx message does not exist", it->m.role_oid,
                               it->m.role_name);
        return;
    }
}

// What the dead letter shows of a message: all of it when it authenticated; otherwise only its
// id of position (its text fields may be anything, not even valid in the database encoding;
// the raw payload is kept, for atx.decode()).
static const AtxMessageC* dead_letter_view(BatchItem* it)
{
    static AtxMessageC empty;
    if (it->authenticated)
        return &it->m;
    memset(&empty, 0, sizeof empty);
    memcpy(empty.id, it->id, 16);
    empty.role_name = "";
    empty.statement = "";
    return &empty;
}

// The outcome handed to a waiting atx_exec caller, and kept in atx.applied.
static void fill_exec_outcome(AtxExecOutcome* o, const BatchItem* it, const AtxOutcome* r)
{
    memset(o, 0, sizeof *o);
    memcpy(o->id, it->id, 16);
    o->status = r->status;
    o->sqlerrcode = r->sqlerrcode;
    o->command = r->command;
    o->rows = r->rows;
    o->error = r->error;
    o->detail = r->detail;
    o->hint = r->hint;
    o->result = r->result;
    o->truncated = r->truncated;
}

// Publishes a stored outcome (jsonb text) to a waiter, if one waits.
static void publish_stored(const uint8 id[16], const char* outcome)
{
    static SPIPlanPtr plan = NULL;
    Oid types[1] = {JSONBOID};
    Datum v[1];
    char *status, *sqlstate, *error, *detail, *hint;
    int code = 0;

    if (outcome == NULL || !atx_exec_is_waited(id))
        return;
    atx_keep_plan(&plan,
                  "SELECT $1 OPERATOR(pg_catalog.->>) 'status', $1 OPERATOR(pg_catalog.->>) 'sqlstate', "
                  "$1 OPERATOR(pg_catalog.->>) 'error', $1 OPERATOR(pg_catalog.->>) 'detail', "
                  "$1 OPERATOR(pg_catalog.->>) 'hint'",
                  1, types);
    v[0] = DirectFunctionCall1(jsonb_in, CStringGetDatum(outcome));
    if (SPI_execute_plan(plan, v, NULL, true, 1) != SPI_OK_SELECT || SPI_processed != 1)
        return;
    status = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
    sqlstate = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2);
    error = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3);
    detail = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 4);
    hint = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 5);
    if (sqlstate && strlen(sqlstate) == 5)
        code = MAKE_SQLSTATE(sqlstate[0], sqlstate[1], sqlstate[2], sqlstate[3], sqlstate[4]);
    atx_exec_publish_now(id, status ? status : "failed", code, error, detail, hint, outcome);
}

// --- atx.apply_batch ------------------------------------------------------------------------

struct BatchArgs {
    int n;
    XLogRecPtr* lsns;
    int* attempts;
    TimestampTz* first_failed;  // 0: not failed before
    int max_attempts;
    int timeout_ms;
    bool wake_at_commit;
};

static void read_args(FunctionCallInfo fcinfo, BatchArgs* a)
{
    Datum* d;
    bool* nulls;
    int n2, n3;

    for (int i = 0; i < 6; i++)
        if (PG_ARGISNULL(i))
            ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED), errmsg("arguments of atx.apply_batch must not be NULL")));
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
    deconstruct_array(PG_GETARG_ARRAYTYPE_P(2), TIMESTAMPTZOID, sizeof(TimestampTz), true, TYPALIGN_DOUBLE, &d,
                      &nulls, &n3);
    a->first_failed = (TimestampTz*)palloc(sizeof(TimestampTz) * (a->n + 1));
    for (int i = 0; i < a->n; i++)
        a->first_failed[i] = (i < n3 && !nulls[i]) ? DatumGetTimestampTz(d[i]) : 0;
    a->max_attempts = Max(PG_GETARG_INT32(3), 1);
    a->timeout_ms = Max(PG_GETARG_INT32(4), 0);
    a->wake_at_commit = PG_GETARG_BOOL(5);
}

// Applies the batch in order. Returns whether a waited message's outcome awaits this
// transaction's commit.
static bool apply_items(const BatchArgs* a, BatchItem* items)
{
    XLogRecPtr horizon = atx_applied_horizon();
    uint8(*ids)[16] = (uint8(*)[16])palloc0(16 * (a->n + 1));
    char** found = (char**)palloc0(sizeof(char*) * (a->n + 1));  // status of a record, NULL: none
    char** stored = (char**)palloc0(sizeof(char*) * (a->n + 1));
    XLogRecPtr* rec_lsn = (XLogRecPtr*)palloc(sizeof(XLogRecPtr) * (a->n + 1));
    const char** rec_status = (const char**)palloc(sizeof(char*) * (a->n + 1));
    const char** rec_outcome = (const char**)palloc(sizeof(char*) * (a->n + 1));
    uint8(*rec_id)[16] = (uint8(*)[16])palloc0(16 * (a->n + 1));
    int nrec = 0;
    bool stop = false;
    bool waiters = false;
    TimestampTz now = GetCurrentTimestamp();

    // Pass 1: read each message from the WAL and authenticate it.
    for (int i = 0; i < a->n; i++) {
        BatchItem* it = &items[i];
        int dead_code;
        const char* dead_error;

        it->lsn = a->lsns[i];
        it->attempts = a->attempts[i];
        it->first_failed = a->first_failed[i] ? a->first_failed[i] : now;
        if (horizon != InvalidXLogRecPtr && it->lsn < horizon) {
            item_done(it, "already");  // handled and confirmed before; its record is pruned
            continue;
        }
        load(it, &dead_code, &dead_error);
        if (it->state == ITEM_DONE)
            continue;
        if (dead_code != 0 && !it->authenticated && atx_applied_at_lsn(it->lsn)) {
            // Handled before under the id it carries: it authenticated then, not now (the key
            // changed). Its record is by that id, which cannot be trusted now, so by position.
            item_done(it, "already");
            continue;
        }
        if (dead_code != 0) {
            // Dead-lettered below, in order, unless handled before.
            it->sqlerrcode = dead_code;
            it->error = dead_error;
            // A payload that did not decode or authenticate: nothing of it may be trusted.
            it->failure = it->authenticated ? "permanent" : "unauthenticated";
        }
        if (it->have_id)
            memcpy(ids[i], it->id, 16);
    }
    atx_applied_lookup(a->n, ids, found, stored);
    // The same id twice in one batch (a payload written again at another position): the
    // first one decides, the others are handled before.
    for (int i = 1; i < a->n; i++) {
        if (!items[i].have_id || found[i])
            continue;
        for (int j = 0; j < i; j++)
            if (items[j].have_id && memcmp(ids[j], ids[i], 16) == 0) {
                found[i] = (char*)"applied";
                break;
            }
    }

    // Pass 2: in order. A message that must be retried, or run at top level, ends the batch:
    // the messages after it are of the same caller and must wait for it.
    for (int i = 0; i < a->n; i++) {
        BatchItem* it = &items[i];
        AtxOutcome r;
        AtxExecOutcome eo;
        const char* outcome_json = NULL;
        int reason = 0;

        if (it->state == ITEM_DONE) {
            if (strcmp(it->status, "rejected") == 0)
                stop = true;  // the applier sent what is not ours: stop before doing anything more
            continue;
        }
        if (stop) {
            item_done(it, "skipped");
            continue;
        }
        if (it->have_id && found[i] && strcmp(found[i], "started") == 0) {
            // A non-atomic run began and never finished: it may have committed part of its work.
            atx_dead_letter_write(dead_letter_view(it), it->lsn, it->payload, it->len,
                                  ERRCODE_T_R_STATEMENT_COMPLETION_UNKNOWN, kInDoubt, NULL, kInDoubtHint, it->attempts,
                                  it->first_failed);
            item_failed(it, "dead", ERRCODE_T_R_STATEMENT_COMPLETION_UNKNOWN, kInDoubt, "in doubt");
            memcpy(rec_id[nrec], it->id, 16);
            rec_lsn[nrec] = it->lsn;
            rec_status[nrec] = "dead";
            rec_outcome[nrec++] = NULL;
            continue;
        }
        if (it->have_id && found[i]) {
            item_done(it, "already");
            if (a->wake_at_commit)
                publish_stored(it->id, stored[i]);
            continue;
        }
        if (it->sqlerrcode != 0) {
            atx_dead_letter_write(dead_letter_view(it), it->lsn, it->payload, it->len, it->sqlerrcode, it->error, NULL,
                                  NULL, it->attempts, it->first_failed);
            item_done(it, "dead");
            memcpy(rec_id[nrec], it->id, 16);
            rec_lsn[nrec] = it->lsn;
            rec_status[nrec] = "dead";
            rec_outcome[nrec++] = NULL;
            continue;
        }

        if (it->m.waited && atx_exec_abandoned(it->id, &reason)) {
            // Its caller gave up before it ran (atx.exec_on_abandon = cancel).
            memset(&r, 0, sizeof r);
            r.status = "failed";
            r.failure = ATX_FAIL_CANCELLED;
            r.sqlerrcode = ERRCODE_QUERY_CANCELED;
            r.error = psprintf("cancelled: the atx_exec call waiting for this message gave up (%s)",
                               reason == ATX_GAVE_UP_DEADLOCK  ? "deadlock with its caller"
                               : reason == ATX_GAVE_UP_TIMEOUT ? "atx.exec_timeout"
                                                               : "cancelled by its caller");
        } else {
            atx_execute_message(&it->m, a->timeout_ms, &r);
        }

        if (strcmp(r.status, "failed") != 0) {
            item_done(it, r.status);
            it->command = r.command;
            it->rows = r.rows;
        } else if (r.failure == ATX_FAIL_NONATOMIC) {
            item_failed(it, "nonatomic", r.sqlerrcode, r.error, atx_failure_name(r.failure));
            stop = true;
            continue;
        } else if (r.failure == ATX_FAIL_TRANSIENT && it->attempts < a->max_attempts) {
            item_failed(it, "retry", r.sqlerrcode, r.error, atx_failure_name(r.failure));
            stop = true;
            continue;
        } else {
            const char* error = r.error;
            if (r.failure == ATX_FAIL_TRANSIENT)
                error = psprintf("%s (transient, gave up after %d attempts)", r.error, it->attempts);
            atx_dead_letter_write(&it->m, it->lsn, it->payload, it->len, r.sqlerrcode, error, r.detail, r.hint,
                                  it->attempts, it->first_failed);
            item_failed(it, "dead", r.sqlerrcode, error, atx_failure_name(r.failure));
        }

        if (it->m.waited) {
            fill_exec_outcome(&eo, it, &r);
            outcome_json = atx_exec_outcome_json(&eo);
            if (a->wake_at_commit) {
                atx_exec_queue_outcome(&eo);
                waiters = true;
            }
        }
        memcpy(rec_id[nrec], it->id, 16);
        rec_lsn[nrec] = it->lsn;
        rec_status[nrec] = strcmp(it->status, "dead") == 0 ? "dead" : it->status;
        rec_outcome[nrec++] = outcome_json;
    }
    atx_applied_record(nrec, rec_id, rec_lsn, rec_status, rec_outcome);
    return waiters;
}

static Datum apply_batch_body(FunctionCallInfo fcinfo)
{
    ReturnSetInfo* rsinfo = (ReturnSetInfo*)fcinfo->resultinfo;
    BatchArgs a;
    BatchItem* items;
    bool waiters;

    InitMaterializedSRF(fcinfo, 0);
    Entry e = enter();
    atx_exec_note_apply_backend();
    read_args(fcinfo, &a);
    items = (BatchItem*)palloc0(sizeof(BatchItem) * (a.n + 1));
    waiters = apply_items(&a, items);
    for (int i = 0; i < a.n; i++) {
        BatchItem* it = &items[i];
        Datum v[8];
        bool nulls[8];

        memset(nulls, true, sizeof nulls);
        v[0] = LSNGetDatum(it->lsn);
        nulls[0] = false;
        if (it->have_id) {
            v[1] = atx_uuid_datum(it->id);
            nulls[1] = false;
        }
        v[2] = CStringGetTextDatum(it->status);
        nulls[2] = false;
        if (it->sqlerrcode != 0) {
            v[3] = CStringGetTextDatum(unpack_sql_state(it->sqlerrcode));
            v[4] = CStringGetTextDatum(atx_bounded_text(it->error ? it->error : "", MAX_REPORTED_ERROR));
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
        tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, v, nulls);
    }
    leave(e);
    // Whoever waits is woken only once this commit is durable (on this server and, when
    // configured, on the synchronous standbys): the commit of this transaction is synchronous.
    if (waiters)
        (void)set_config_option("synchronous_commit", "on", PGC_USERSET, PGC_S_SESSION, GUC_ACTION_LOCAL, true, 0,
                                false);
    return (Datum)0;
}

// --- atx.apply(lsn): by hand ------------------------------------------------------------------

// Applies one message like the applier, but raises the statement's own error (nothing is
// recorded then). For tests and operators.
static Datum apply_one_body(FunctionCallInfo fcinfo)
{
    BatchItem it;
    int dead_code;
    const char* dead_error;
    AtxOutcome r;
    TupleDesc tupdesc;
    Datum row;
    Datum v[4];
    bool nulls[4];
    char* found = NULL;
    char* stored = NULL;
    uint8 ids[1][16];
    XLogRecPtr horizon;

    if (PG_ARGISNULL(0))
        ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED), errmsg("lsn must not be NULL")));
    if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
        elog(ERROR, "return type must be a row type");
    Entry e = enter();
    memset(&it, 0, sizeof it);
    it.lsn = PG_GETARG_LSN(0);
    horizon = atx_applied_horizon();
    if (horizon != InvalidXLogRecPtr && it.lsn < horizon)
        ereport(ERROR, (errcode(ERRCODE_UNIQUE_VIOLATION),
                        errmsg("the pg_atx message at %X/%X was handled before (it is below the horizon %X/%X)",
                               ATX_LSN_ARGS(it.lsn), ATX_LSN_ARGS(horizon))));
    load(&it, &dead_code, &dead_error);
    if (it.state == ITEM_DONE)
        ereport(ERROR, (errcode(it.sqlerrcode), errmsg("%s", it.error)));
    if (dead_code != 0)
        ereport(ERROR, (errcode(dead_code), errmsg("%s", dead_error)));
    memcpy(ids[0], it.id, 16);
    atx_applied_lookup(1, ids, &found, &stored);
    if (found)
    {
        char idtext[37];
        atx_uuid_text(it.id, idtext);
        ereport(ERROR, (errcode(ERRCODE_UNIQUE_VIOLATION),
                        errmsg("pg_atx message %s at %X/%X was handled before", idtext, ATX_LSN_ARGS(it.lsn)),
                        errdetail("atx.applied records it: a message is never applied twice.")));
    }
    atx_execute_message(&it.m, 0, &r);
    if (r.edata)
        ReThrowError(r.edata);  // the statement's own error, unchanged
    {
        const char* status = r.status;
        atx_applied_record(1, ids, &it.lsn, &status, (const char**)&stored);
    }

    memset(nulls, true, sizeof nulls);
    v[0] = atx_uuid_datum(it.id);
    nulls[0] = false;
    v[1] = CStringGetTextDatum(r.status);
    nulls[1] = false;
    if (strcmp(r.status, "applied") == 0) {
        v[2] = CStringGetTextDatum(r.command);
        v[3] = Int64GetDatum(r.rows);
        nulls[2] = nulls[3] = false;
    }
    row = result_row(e, tupdesc, v, nulls);
    leave(e);
    PG_RETURN_DATUM(row);
}

// --- atx.dead_letter_message: the applier's own verdicts -------------------------------------------

// Dead-letters the message at lsn without running it (the applier decided: its apply backend
// died with it too often, or it ran non-atomically and its outcome is unknown). Returns its
// id, or NULL when it was handled before.
static Datum dead_letter_message_body(FunctionCallInfo fcinfo)
{
    BatchItem it;
    int dead_code;
    const char* dead_error;
    char* found = NULL;
    char* stored = NULL;
    uint8 ids[1][16];
    const char* status = "dead";
    const char* sqlstate;
    int code;
    AtxExecOutcome eo;
    AtxOutcome r;
    const char* outcome = NULL;

    for (int i = 0; i < 5; i++)
        if (PG_ARGISNULL(i))
            ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED), errmsg("arguments must not be NULL")));
    sqlstate = text_to_cstring(PG_GETARG_TEXT_PP(1));
    if (strlen(sqlstate) != 5)
        ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE), errmsg("invalid SQLSTATE \"%s\"", sqlstate)));
    code = MAKE_SQLSTATE(sqlstate[0], sqlstate[1], sqlstate[2], sqlstate[3], sqlstate[4]);
    Entry e = enter();
    memset(&it, 0, sizeof it);
    it.lsn = PG_GETARG_LSN(0);
    load(&it, &dead_code, &dead_error);
    if (it.state == ITEM_DONE)
        ereport(ERROR, (errcode(it.sqlerrcode), errmsg("%s", it.error)));
    memcpy(ids[0], it.id, 16);
    atx_applied_lookup(1, ids, &found, &stored);
    if (found && strcmp(found, "started") != 0) {  // handled; a started one is in doubt: dead-lettered
        leave(e);
        PG_RETURN_NULL();
    }
    atx_dead_letter_write(dead_letter_view(&it), it.lsn, it.payload, it.len, code,
                          text_to_cstring(PG_GETARG_TEXT_PP(2)), NULL, NULL, PG_GETARG_INT32(3),
                          PG_GETARG_TIMESTAMPTZ(4));
    if (it.authenticated && it.m.waited) {
        memset(&r, 0, sizeof r);
        r.status = "failed";
        r.sqlerrcode = code;
        r.error = text_to_cstring(PG_GETARG_TEXT_PP(2));
        fill_exec_outcome(&eo, &it, &r);
        outcome = atx_exec_outcome_json(&eo);
        atx_exec_queue_outcome(&eo);
    }
    if (found)  // 'started'
        atx_applied_update(1, ids, &it.lsn, &status, &outcome);
    else
        atx_applied_record(1, ids, &it.lsn, &status, &outcome);
    leave(e);
    PG_RETURN_DATUM(atx_uuid_datum(it.id));  // it.id is on the stack
}

// --- atx.wake: publish outcomes whose commits the applier now knows to be durable -------------

static Datum wake_body(FunctionCallInfo fcinfo)
{
    ArrayType* arr = PG_GETARG_ARRAYTYPE_P(0);
    Datum* d;
    bool* nulls;
    int n, woken = 0;
    uint8(*ids)[16];
    char** found;
    char** stored;

    Entry e = enter();
    deconstruct_array(arr, UUIDOID, UUID_LEN, false, TYPALIGN_CHAR, &d, &nulls, &n);
    ids = (uint8(*)[16])palloc0(16 * (n + 1));
    found = (char**)palloc0(sizeof(char*) * (n + 1));
    stored = (char**)palloc0(sizeof(char*) * (n + 1));
    for (int i = 0; i < n; i++)
        if (!nulls[i])
            memcpy(ids[i], DatumGetUUIDP(d[i])->data, 16);
    atx_applied_lookup(n, ids, found, stored);
    for (int i = 0; i < n; i++)
        if (found[i] && stored[i] != NULL) {
            publish_stored(ids[i], stored[i]);
            woken++;
        }
    leave(e);
    PG_RETURN_INT32(woken);
}

// --- atx.prune: the horizon follows the slot ----------------------------------------------------

// Everything below the slot's confirmed position was handled (the applier confirms nothing
// else), so the records of those messages can go; a message below the horizon is refused as
// handled before. Returns the new horizon.
static Datum prune_body(FunctionCallInfo fcinfo)
{
    static SPIPlanPtr plan = NULL;
    Oid types[1] = {PG_LSNOID};
    Datum v[1];
    XLogRecPtr confirmed;
    Entry e = enter();

    if (!atx_slot_confirmed_flush(MyDatabaseId, &confirmed) || confirmed == InvalidXLogRecPtr) {
        leave(e);
        PG_RETURN_NULL();
    }
    atx_keep_plan(&plan,
                  "WITH h AS (UPDATE atx.apply_horizon SET lsn = $1, updated_at = pg_catalog.now() "
                  "          WHERE lsn OPERATOR(pg_catalog.<) $1 RETURNING lsn) "
                  "DELETE FROM atx.applied WHERE lsn OPERATOR(pg_catalog.<) (SELECT lsn FROM h)",
                  1, types);
    v[0] = LSNGetDatum(confirmed);
    if (SPI_execute_plan(plan, v, NULL, false, 0) < 0)
        elog(ERROR, "could not prune atx.applied");
    leave(e);
    PG_RETURN_LSN(confirmed);
}

// --- atx.unapplied: which of these handled messages has this server no record of? --------------

static Datum unapplied_body(FunctionCallInfo fcinfo)
{
    static SPIPlanPtr plan = NULL;
    Oid types[1] = {PG_LSNARRAYOID};
    Datum v[1];
    ReturnSetInfo* rsinfo = (ReturnSetInfo*)fcinfo->resultinfo;

    InitMaterializedSRF(fcinfo, MAT_SRF_USE_EXPECTED_DESC);
    Entry e = enter();
    atx_keep_plan(&plan,
                  "SELECT l FROM pg_catalog.unnest($1) l WHERE l OPERATOR(pg_catalog.>=) "
                  "COALESCE((SELECT lsn FROM atx.apply_horizon), '0/0'::pg_catalog.pg_lsn) "
                  "AND NOT EXISTS (SELECT 1 FROM atx.applied a WHERE a.lsn OPERATOR(pg_catalog.=) l)",
                  1, types);
    v[0] = PG_GETARG_DATUM(0);
    if (SPI_execute_plan(plan, v, NULL, true, 0) != SPI_OK_SELECT)
        elog(ERROR, "could not read atx.applied");
    for (uint64 r = 0; r < SPI_processed; r++) {
        bool isnull;
        Datum d = SPI_getbinval(SPI_tuptable->vals[r], SPI_tuptable->tupdesc, 1, &isnull);
        tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, &d, &isnull);
    }
    leave(e);
    return (Datum)0;
}

// --- atx.message_at / atx.verify_payload: looking at messages ------------------------------------

static Datum message_at_body(FunctionCallInfo fcinfo)
{
    char *payload, *why;
    size_t len;
    bytea* out;
    Entry e = enter();

    if (!atx_read_wal_message(PG_GETARG_LSN(0), &payload, &len, &why))
        ereport(ERROR, (errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION), errmsg("%s", why)));
    out = (bytea*)MemoryContextAlloc(e.caller, VARHDRSZ + len);
    SET_VARSIZE(out, VARHDRSZ + len);
    memcpy(VARDATA(out), payload, len);
    leave(e);
    PG_RETURN_BYTEA_P(out);
}

// Decodes and authenticates a payload without running it (fuzzing, forensics): its fields as
// jsonb, or 22P03 / 0A000 / 28000.
static Datum verify_payload_body(FunctionCallInfo fcinfo)
{
    bytea* payload = PG_GETARG_BYTEA_PP(0);
    AtxMessageC m;
    atx::CaughtError err;
    uint8 mac[32];

    if (!atx_decode_payload(VARDATA_ANY(payload), VARSIZE_ANY_EXHDR(payload), &m, &err))
        atx::raise_caught(err);
    atx_hmac_sha256(m.body, m.body_len, mac);
    if (!atx_mac_equal(mac, (const uint8*)m.mac))
        ereport(ERROR, (errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
                        errmsg("pg_atx message authentication failed: HMAC mismatch")));
    PG_RETURN_DATUM(DirectFunctionCall1(jsonb_in, CStringGetDatum(atx_message_json(&m))));
}

// atx.decode(payload): the fields of a payload, without MAC check (dead letters on display).
static Datum decode_body(FunctionCallInfo fcinfo)
{
    bytea* payload = PG_GETARG_BYTEA_PP(0);
    AtxMessageC m;
    atx::CaughtError err;

    if (!atx_decode_payload(VARDATA_ANY(payload), VARSIZE_ANY_EXHDR(payload), &m, &err))
        atx::raise_caught(err);
    PG_RETURN_DATUM(DirectFunctionCall1(jsonb_in, CStringGetDatum(atx_message_json(&m))));
}

// --- atx.retry_dead_letter: an operator's second chance ------------------------------------------

// Runs a dead letter's message again (its payload was read from the WAL and authenticated when
// it was dead-lettered; it is authenticated again). Success: the dead letter goes, atx.applied
// says applied, in one transaction. Failure: the dead letter stays, with the new error and one
// more attempt. Two operators retrying at once: the second finds nothing.
static Datum retry_dead_letter_body(FunctionCallInfo fcinfo)
{
    static SPIPlanPtr sel = NULL, del = NULL, upd = NULL;
    Oid t1[1] = {INT8OID};
    Oid t3[3] = {INT8OID, TEXTOID, TEXTOID};
    Datum v[3];
    Datum row;
    bytea* payload;
    XLogRecPtr lsn;
    bool isnull;
    AtxMessageC m;
    atx::CaughtError err;
    uint8 mac[32];
    AtxOutcome r;
    TupleDesc tupdesc;
    Datum out[4];
    bool onulls[4] = {true, false, true, true};
    uint8 ids[1][16];
    const char* status;
    char* found = NULL;
    char* stored = NULL;

    if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
        elog(ERROR, "return type must be a row type");
    Entry e = enter();
    atx_keep_plan(&sel,
                  "SELECT payload, source_lsn FROM atx.dead_letter WHERE id OPERATOR(pg_catalog.=) $1 FOR UPDATE", 1,
                  t1);
    atx_keep_plan(&del, "DELETE FROM atx.dead_letter WHERE id OPERATOR(pg_catalog.=) $1", 1, t1);
    atx_keep_plan(&upd,
                  "UPDATE atx.dead_letter SET sqlstate = $2, error = $3, attempts = attempts OPERATOR(pg_catalog.+) 1, "
                  "dead_at = pg_catalog.now() WHERE id OPERATOR(pg_catalog.=) $1",
                  3, t3);
    v[0] = PG_GETARG_DATUM(0);
    if (SPI_execute_plan(sel, v, NULL, false, 1) != SPI_OK_SELECT || SPI_processed == 0) {
        leave(e);
        out[1] = CStringGetTextDatum("gone");
        PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(tupdesc), out, onulls)));
    }
    payload = DatumGetByteaPCopy(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
    lsn = DatumGetLSN(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
    if (isnull)
        lsn = InvalidXLogRecPtr;
    if (!atx_decode_payload(VARDATA_ANY(payload), VARSIZE_ANY_EXHDR(payload), &m, &err))
        atx::raise_caught(err);
    atx_hmac_sha256(m.body, m.body_len, mac);
    if (!atx_mac_equal(mac, (const uint8*)m.mac))
        ereport(ERROR, (errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
                        errmsg("the dead letter's payload does not authenticate: HMAC mismatch")));
    if (!SearchSysCacheExists1(AUTHOID, ObjectIdGetDatum(m.role_oid)))
        ereport(ERROR, (errcode(ERRCODE_UNDEFINED_OBJECT),
                        errmsg("role with OID %u (\"%s\") of the pg_atx message does not exist", m.role_oid,
                               m.role_name)));
    // Applied before under its own id (a dead letter of a payload that did not authenticate at
    // the time, e.g. while another key was in use): never run twice.
    memcpy(ids[0], m.id, 16);
    atx_applied_lookup(1, ids, &found, &stored);
    if (found && (strcmp(found, "applied") == 0 || strcmp(found, "duplicate") == 0)) {
        if (SPI_execute_plan(del, v, NULL, false, 0) < 0)
            elog(ERROR, "could not delete the dead letter");
        out[0] = atx_uuid_datum(m.id);
        onulls[0] = false;
        out[1] = CStringGetTextDatum("already");
        row = result_row(e, tupdesc, out, onulls);
        leave(e);
        PG_RETURN_DATUM(row);
    }
    atx_execute_message(&m, 0, &r);
    out[0] = atx_uuid_datum(m.id);
    onulls[0] = false;
    out[1] = CStringGetTextDatum(r.status);
    if (strcmp(r.status, "failed") == 0) {
        v[1] = CStringGetTextDatum(unpack_sql_state(r.sqlerrcode));
        v[2] = CStringGetTextDatum(atx_bounded_text(r.error, 8000));
        if (SPI_execute_plan(upd, v, NULL, false, 0) < 0)
            elog(ERROR, "could not update the dead letter");
        out[2] = v[1];
        out[3] = v[2];
        onulls[2] = onulls[3] = false;
    } else {
        if (SPI_execute_plan(del, v, NULL, false, 0) < 0)
            elog(ERROR, "could not delete the dead letter");
        const char* no_outcome = NULL;
        status = r.status;
        atx_applied_update(1, ids, &lsn, &status, &no_outcome);  // it said 'dead'

    }
    row = result_row(e, tupdesc, out, onulls);
    leave(e);
    PG_RETURN_DATUM(row);
}

ATX_ENTRY(atx_apply_batch, apply_batch_body)
ATX_ENTRY(atx_apply_one, apply_one_body)
ATX_ENTRY(atx_dead_letter_message, dead_letter_message_body)
ATX_ENTRY(atx_wake, wake_body)
ATX_ENTRY(atx_prune, prune_body)
ATX_ENTRY(atx_unapplied, unapplied_body)
ATX_ENTRY(atx_message_at, message_at_body)
ATX_ENTRY(atx_verify_payload, verify_payload_body)
ATX_ENTRY(atx_decode, decode_body)
ATX_ENTRY(atx_retry_dead_letter, retry_dead_letter_body)
