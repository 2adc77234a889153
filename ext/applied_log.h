// The server's record of handled messages (applied_log.cc): atx.applied (exactly once, replay
// refusal), atx.apply_horizon, atx.dead_letter. Must be called inside an SPI connection, as the
// extension owner (the SQL entry points are SECURITY DEFINER).
#pragma once

#include "atx_ext.h"
#include "codec_bridge.h"

// Everything that starts before it was handled and confirmed (atx.prune()); 0 before the first
// prune.
XLogRecPtr atx_applied_horizon(void);

// For each of n ids: its record (status[i]: "applied", "duplicate", "dead", "started"; NULL when
// there is none), and the outcome stored for a waited message (outcome[i], jsonb text, or NULL).
void atx_applied_lookup(int n, uint8 (*ids)[16], char** status, char** outcome);
// Is any message recorded at this start LSN? (For a payload whose id cannot be trusted.)
bool atx_applied_at_lsn(XLogRecPtr lsn);

// Records n handled messages (status "applied", "duplicate", "dead"; outcome jsonb text or NULL).
// A message some other transaction recorded meanwhile makes this raise 23505 (after waiting for
// that transaction to end): the caller's transaction, which ran the message too, must not commit.
// That is what keeps a message from running twice when two sessions get it at once (an old
// apply backend still finishing the batch of an applier that was killed).
void atx_applied_record(int n, uint8 (*ids)[16], const XLogRecPtr* lsns, const char** statuses,
                        const char** outcomes);
// Same, for a message whose record says 'started' (a non-atomic run) or that an operator retries:
// the record is replaced.
void atx_applied_update(int n, uint8 (*ids)[16], const XLogRecPtr* lsns, const char** statuses,
                        const char** outcomes);

// Writes the dead letter of a message (texts bounded) and notifies channel atx_dead_letter with
// its id.
void atx_dead_letter_write(const AtxMessageC* m, XLogRecPtr lsn, const char* payload, size_t len, int sqlerrcode,
                           const char* error, const char* detail, const char* hint, int attempts,
                           TimestampTz first_failed);

// A text made valid in the database encoding and cut to at most max bytes on a character
// boundary (NULL stays NULL).
const char* atx_bounded_text(const char* s, int max);
