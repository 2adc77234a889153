// Outcomes of waited messages and the applier's fixed verdicts (apply_outcome.cc), shared by the
// apply entry points.
#pragma once

#include "atx_ext.h"
#include "run_as_caller.h"
#include "waiters.h"

// The outcome handed to a waiting atx_exec caller, and kept in atx.applied.
void atx_fill_exec_outcome(AtxExecOutcome* o, const uint8 id[16], const AtxOutcome* r);

// Publishes a stored outcome (jsonb text, may be NULL) to the waiter of id, if one waits.
// Inside an SPI connection.
void atx_publish_stored(const uint8 id[16], const char* outcome);

// A non-atomic message found started before (a crash while it ran): dead-lettered 40003.
const char* atx_in_doubt_text(void);
const char* atx_in_doubt_hint(void);
