// The apply side's entry points for operators and for the applier's own verdicts:
// atx.apply (one message by hand, raising its error), atx.dead_letter_message (dead-letter a
// message without running it: the applier's fixed verdicts, or an operator's), and
// atx.retry_dead_letter (run a dead letter's message again). See docs/design.md.
//
// SECURITY DEFINER with SET search_path, callable by superusers and members of atx_applier only
// (checked inside too). Plain C style (see pg_guard.h).
#include "applied_log.h"
#include "apply_common.h"
#include "apply_outcome.h"
#include "apply_status.h"
#include "message_load.h"
#include "parked.h"
#include "pg_guard.h"
#include "run_as_caller.h"
#include "spi_util.h"

extern "C" {
#include "access/xlog.h"
#include "utils/pg_lsn.h"
}

#define DEFAULT_RETRY_TIMEOUT_MS 60000

static AtxRecord record_of(const AtxLoaded* l, const char* status, const char* outcome)
{
    return atx_record(l->id, l->lsn, l->authenticated ? &l->m : NULL, status, outcome);
}

// --- atx.apply(lsn): by hand ------------------------------------------------------------------

// Applies one message like the applier, but raises the statement's own error (nothing is
// recorded then). For tests and operators.
static Datum apply_one_body(FunctionCallInfo fcinfo)
{
    AtxLoaded l;
    AtxOutcome r;
    TupleDesc tupdesc;
    Datum row;
    Datum v[4];
    bool nulls[4];
    char *found, *stored;
    XLogRecPtr horizon, lsn;

    if (PG_ARGISNULL(0))
        ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED), errmsg("lsn must not be NULL")));
    if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
        elog(ERROR, "return type must be a row type");
    lsn = PG_GETARG_LSN(0);
    AtxApplyFrame f = atx_apply_enter();
    horizon = atx_applied_horizon();
    if (horizon != InvalidXLogRecPtr && lsn < horizon && !atx_parked_at(lsn))
        ereport(ERROR, (errcode(ERRCODE_UNIQUE_VIOLATION),
                        errmsg("the pg_atx message at %X/%X was handled before (it is below the horizon %X/%X)",
                               ATX_LSN_ARGS(lsn), ATX_LSN_ARGS(horizon))));
    atx_load_message(lsn, &l);
    if (l.state != ATX_LOAD_OK)
        ereport(ERROR, (errcode(l.sqlerrcode), errmsg("%s", l.error)));
    atx_applied_lookup(l.id, &found, &stored, NULL);
    if (found && strcmp(found, "parked") != 0) {
        char idtext[37];
        atx_uuid_text(l.id, idtext);
        ereport(ERROR, (errcode(ERRCODE_UNIQUE_VIOLATION),
                        errmsg("pg_atx message %s at %X/%X was handled before", idtext, ATX_LSN_ARGS(lsn)),
                        errdetail("atx.applied records it: a message is never applied twice.")));
    }
    atx_execute_message(&l.m, l.lsn, 0, &r);
    if (r.edata)
        ReThrowError(r.edata);  // the statement's own error, unchanged
    {
        AtxRecord rec = record_of(&l, r.status, NULL);
        if (found)  // parked: its record is taken over
            atx_applied_reclaim(1, &rec);
        else
            atx_applied_record(1, &rec);
    }

    memset(nulls, true, sizeof nulls);
    v[0] = atx_uuid_datum(l.id);
    nulls[0] = false;
    v[1] = CStringGetTextDatum(r.status);
    nulls[1] = false;
    if (strcmp(r.status, "applied") == 0) {
        v[2] = CStringGetTextDatum(r.command);
        v[3] = Int64GetDatum(r.rows);
        nulls[2] = nulls[3] = false;
    }
    row = atx_result_row(&f, tupdesc, v, nulls);
    atx_apply_leave(&f);
    PG_RETURN_DATUM(row);
}

// --- atx.dead_letter_message: the applier's own verdicts --------------------------------------

// Each verdict's SQLSTATE and text are fixed here: an atx_exec caller that learns its message
// was dead-lettered this way is told these words, never text from whoever called this.
static void verdict_text(atx::Verdict v, int* code, const char** error, const char** hint)
{
    *hint = NULL;
    switch (v) {
    case atx::Verdict::Timeout:
        *code = ERRCODE_QUERY_CANCELED;
        *error = "the statement ran past its time limit and did not stop when cancelled: atx-applier ended its "
                 "apply session";
        *hint = "Raise atx-applier's --statement-timeout-ms, or make the statement finish sooner.";
        return;
    case atx::Verdict::BackendLost:
        *code = ERRCODE_CONNECTION_FAILURE;
        *error = "the apply session running this message was lost repeatedly while it ran (killed, crashed or out of "
                 "memory): it is not run again";
        return;
    case atx::Verdict::InDoubt:
        *code = ERRCODE_T_R_STATEMENT_COMPLETION_UNKNOWN;
        *error = atx_in_doubt_text();
        *hint = atx_in_doubt_hint();
        return;
    case atx::Verdict::Operator:
        *code = ERRCODE_OPERATOR_INTERVENTION;
        *error = "dead-lettered by an operator without running (atx-applier dead-letter)";
        return;
    }
    *code = ERRCODE_INTERNAL_ERROR;
    *error = "unknown verdict";
}

// atx.dead_letter_message(lsn pg_lsn, verdict text, attempts int, first_failed timestamptz)
// RETURNS uuid: dead-letters the message at lsn without running it. Returns its id, or NULL when
// it was handled before. Never decodes a parameter value: it works for any genuine message.
static Datum dead_letter_message_body(FunctionCallInfo fcinfo)
{
    AtxLoaded l;
    char *found, *stored;
    const char* verdict_s;
    std::optional<atx::Verdict> verdict;
    int code;
    const char *error, *hint;
    const char* outcome = NULL;
    AtxRecord rec;
    Datum id;

    for (int i = 0; i < 2; i++)
        if (PG_ARGISNULL(i))
            ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED), errmsg("lsn and verdict must not be NULL")));
    verdict_s = text_to_cstring(PG_GETARG_TEXT_PP(1));
    verdict = atx::parse_verdict(verdict_s);
    if (!verdict)
        ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE), errmsg("unknown verdict \"%s\"", verdict_s),
                        errhint("One of timeout, backend_lost, in_doubt, operator.")));
    verdict_text(*verdict, &code, &error, &hint);
    AtxApplyFrame f = atx_apply_enter();
    atx_load_message(PG_GETARG_LSN(0), &l);
    if (l.state == ATX_LOAD_REJECTED)
        ereport(ERROR, (errcode(l.sqlerrcode), errmsg("%s", l.error)));
    atx_applied_lookup(l.id, &found, &stored, NULL);
    // Handled before; a started one is in doubt and a parked one not run yet: dead-lettered.
    if (found && strcmp(found, "started") != 0 && strcmp(found, "parked") != 0) {
        atx_apply_leave(&f);
        PG_RETURN_NULL();
    }
    atx_dead_letter_write(atx_loaded_view(&l), l.lsn, l.payload, l.len, code, error, NULL, hint,
                          PG_ARGISNULL(2) ? 1 : PG_GETARG_INT32(2),
                          PG_ARGISNULL(3) ? GetCurrentTimestamp() : PG_GETARG_TIMESTAMPTZ(3));
    if (l.authenticated && l.m.waited) {
        AtxOutcome r;
        AtxExecOutcome eo;
        memset(&r, 0, sizeof r);
        r.status = "failed";
        r.sqlerrcode = code;
        r.error = (char*)error;
        r.hint = (char*)hint;
        atx_fill_exec_outcome(&eo, l.id, &r);
        outcome = atx_exec_outcome_json(&eo);
        atx_waiter_queue_outcome(&eo);
    }
    rec = record_of(&l, "dead", outcome);
    if (found && strcmp(found, "parked") == 0)
        atx_applied_reclaim(1, &rec);
    else if (found)  // 'started'
        atx_applied_update(1, &rec);
    else
        atx_applied_record(1, &rec);
    id = atx_uuid_datum(l.id);  // in the caller's context: SPI_finish deletes the SPI one
    atx_apply_leave(&f);
    PG_RETURN_DATUM(id);
}

// --- atx.retry_dead_letter: an operator's second chance ------------------------------------------

// Runs a dead letter's message again (its payload was read from the WAL and authenticated when
// it was dead-lettered; it is authenticated again), at most timeout_ms. Success: the dead letter
// goes, atx.applied says applied, in one transaction. Failure: the dead letter stays, with the
// new error and one more attempt. Two operators retrying at once: the second finds nothing.
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
    AtxLoaded l;
    AtxOutcome r;
    TupleDesc tupdesc;
    Datum out[4];
    bool onulls[4] = {true, false, true, true};
    char *found, *stored;
    int timeout_ms = PG_NARGS() > 1 && !PG_ARGISNULL(1) ? Max(PG_GETARG_INT32(1), 0) : DEFAULT_RETRY_TIMEOUT_MS;

    if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
        elog(ERROR, "return type must be a row type");
    AtxApplyFrame f = atx_apply_enter();
    atx_keep_plan(&sel, "SELECT payload, source_lsn FROM atx.dead_letter WHERE id OPERATOR(pg_catalog.=) $1 FOR UPDATE",
                  1, t1);
    atx_keep_plan(&del, "DELETE FROM atx.dead_letter WHERE id OPERATOR(pg_catalog.=) $1", 1, t1);
    atx_keep_plan(&upd,
                  "UPDATE atx.dead_letter SET sqlstate = $2, error = $3, attempts = attempts OPERATOR(pg_catalog.+) 1, "
                  "dead_at = pg_catalog.now() WHERE id OPERATOR(pg_catalog.=) $1",
                  3, t3);
    v[0] = PG_GETARG_DATUM(0);
    if (SPI_execute_plan(sel, v, NULL, false, 1) != SPI_OK_SELECT || SPI_processed == 0) {
        out[1] = CStringGetTextDatum("gone");
        row = atx_result_row(&f, tupdesc, out, onulls);
        atx_apply_leave(&f);
        PG_RETURN_DATUM(row);
    }
    payload = DatumGetByteaPCopy(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
    lsn = DatumGetLSN(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
    if (isnull)
        lsn = InvalidXLogRecPtr;
    atx_load_payload(VARDATA_ANY(payload), VARSIZE_ANY_EXHDR(payload), lsn, &l);
    if (l.state != ATX_LOAD_OK)
        ereport(ERROR, (errcode(l.sqlerrcode), errmsg("the dead letter's payload cannot run: %s", l.error)));
    // Applied before under its own id (a dead letter of a payload that did not authenticate at
    // the time, e.g. while another key was in use): never run twice.
    atx_applied_lookup(l.id, &found, &stored, NULL);
    if (found && (strcmp(found, "applied") == 0 || strcmp(found, "duplicate") == 0)) {
        if (SPI_execute_plan(del, v, NULL, false, 0) < 0)
            elog(ERROR, "could not delete the dead letter");
        out[0] = atx_uuid_datum(l.id);
        onulls[0] = false;
        out[1] = CStringGetTextDatum("already");
        row = atx_result_row(&f, tupdesc, out, onulls);
        atx_apply_leave(&f);
        PG_RETURN_DATUM(row);
    }
    atx_execute_message(&l.m, lsn, timeout_ms, &r);
    out[0] = atx_uuid_datum(l.id);
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
        AtxRecord rec = record_of(&l, r.status, NULL);
        // Recorded at the WAL position after this run: the nested messages it emitted again
        // (under the ids of the first run's) are further on in the WAL, and atx.prune keeps the
        // records of a message's nested emits while its own record is not below the horizon, so
        // those copies still find them when the applier gets to them.
        rec.lsn = GetXLogInsertRecPtr();
        if (SPI_execute_plan(del, v, NULL, false, 0) < 0)
            elog(ERROR, "could not delete the dead letter");
        atx_applied_update(1, &rec);  // it said 'dead'
    }
    row = atx_result_row(&f, tupdesc, out, onulls);
    atx_apply_leave(&f);
    PG_RETURN_DATUM(row);
}

ATX_ENTRY(atx_apply_one, apply_one_body)
ATX_ENTRY(atx_dead_letter_message, dead_letter_message_body)
ATX_ENTRY(atx_retry_dead_letter, retry_dead_letter_body)
