// Running one verified message as its caller (run_as_caller.cc).
#pragma once

#include "atx_ext.h"
#include "codec_bridge.h"

// Why a message failed, as the apply side sees it.
enum AtxFailure {
    ATX_FAIL_NONE = 0,
    ATX_FAIL_PERMANENT,  // the same statement will fail again: dead-letter it
    ATX_FAIL_TRANSIENT,  // raised by the server for a passing reason (serialization, deadlock,
                         // lock timeout, shutdown, resources): worth retrying
    ATX_FAIL_TIMEOUT,    // ran longer than the apply timeout: permanent
    ATX_FAIL_NONATOMIC,  // needs to run as a top-level statement (COMMIT/ROLLBACK inside,
                         // VACUUM, CREATE INDEX CONCURRENTLY...): nothing of it was kept
    ATX_FAIL_CANCELLED,  // its atx_exec caller gave up and asked for cancellation
};

struct AtxOutcome {
    const char* status;  // "applied", "duplicate", "failed"
    AtxFailure failure;
    int sqlerrcode;
    char* error;
    char* detail;
    char* hint;
    ErrorData* edata;     // the statement's own error (for atx.apply to rethrow)
    const char* command;  // command tag of the (last) statement
    int64 rows;           // rows of the last statement
    const char* result;   // waited: the rows as a JSON array (NULL: none or truncated)
    bool truncated;
};

// Runs m (read at lsn) in an internal subtransaction of the current transaction, as its caller
// role, with its settings, its parameters bound, at most timeout_ms (0: no limit of its own):
// cancelled then by a timer of its own, and recorded in the apply registry with that deadline,
// past which the applier ends the backend. Every error of the statement, a cancel included, is
// caught into out (the subtransaction is rolled back): nothing the statement raises can make the
// batch fail as a whole. Whatever the statement left in the session (cursors, session advisory
// locks, lastval(), the random seed) is cleared before returning. For a waited message the rows
// are captured, and a caller that stopped waiting is honoured (cancel_if_abandoned).
void atx_execute_message(const AtxMessageC* m, XLogRecPtr lsn, int timeout_ms, AtxOutcome* out);

// The fixed text of a message cancelled because its atx_exec caller stopped waiting.
const char* atx_cancelled_text(void);

// Human-readable name of a failure class (logs, dead letters).
const char* atx_failure_name(AtxFailure f);
