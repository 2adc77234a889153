// The server's record of handled messages (applied_log.cc): atx.applied (exactly once, replay
// refusal), atx.apply_horizon, atx.dead_letter. Must be called inside an SPI connection, as the
// extension owner (the SQL entry points are SECURITY DEFINER).
#pragma once

#include "atx_ext.h"
#include "codec_bridge.h"

// Everything that starts before it was handled and confirmed (atx.prune()); 0 before the first
// prune.
// The snapshot a read-only SPI query would use: the active one, else the transaction's. The
// records are read with it, never through the planner.
Snapshot atx_read_snapshot(void);
XLogRecPtr atx_applied_horizon(void);

// One handled message, as atx.applied records it.
struct AtxRecord {
    uint8 id[16];
    XLogRecPtr lsn;
    const char* status;   // "applied", "duplicate", "dead", "cancelled", "started", "parked"
    const char* outcome;  // jsonb text for a waited message, or NULL
    bool has_parent;      // a nested emit: parent is the message that emitted it
    uint8 parent[16];
};

// The record of a message read at lsn, recorded under id (its own, or for a payload that did not
// authenticate an id of its position: m NULL then). A nested emit names its parent (m's lane).
AtxRecord atx_record(const uint8 id[16], XLogRecPtr lsn, const AtxMessageC* m, const char* status, const char* outcome);

// The record of id: *status ("applied", "duplicate", "dead", "cancelled", "started"; NULL when
// there is none), *outcome (the jsonb text stored for a waited message, or NULL) and *lsn (where
// the recorded copy was read). By the primary key, never through the planner.
void atx_applied_lookup(const uint8 id[16], char** status, char** outcome, XLogRecPtr* lsn);
// Is any message recorded as handled at this start LSN (a parked one is not)? (For a payload
// whose id cannot be trusted.)
bool atx_applied_at_lsn(XLogRecPtr lsn);

// Records n handled messages. A message some other transaction recorded meanwhile makes this
// raise 23505 (after waiting for that transaction to end): the caller's transaction, which ran
// the message too, must not commit. That is what keeps a message from running twice when two
// sessions get it at once (an old apply backend of a killed applier still finishing its batch).
void atx_applied_record(int n, const AtxRecord* recs);
// Replaces the record of a message that says 'started' (a non-atomic run), 'parked', or that an
// operator retries (a parked copy's payload goes with it).
void atx_applied_update(int n, const AtxRecord* recs);
// Takes over the records of cancelled messages that run after all (a nested emit written again by
// its parent's new attempt, while that parent waits for it) and of parked messages that ran from
// their copy (parked.h): raises 40001 when another transaction took one over meanwhile, so that
// such a message never runs twice.
void atx_applied_reclaim(int n, const AtxRecord* recs);

// Writes the dead letter of a message (texts bounded; its parameters as the caller passed them,
// never converted by a type's functions: a value no receive function accepts must not keep a
// message from being dead-lettered) and notifies channel atx_dead_letter, with no payload:
// anyone may listen, and a message id says when someone called.
void atx_dead_letter_write(const AtxMessageC* m, XLogRecPtr lsn, const char* payload, size_t len, int sqlerrcode,
                           const char* error, const char* detail, const char* hint, int attempts,
                           TimestampTz first_failed);

// A text made valid in the database encoding and cut to at most max bytes on a character
// boundary (NULL stays NULL).
const char* atx_bounded_text(const char* s, int max);

// Deletes the dead letter of message id (its cancelled copy runs after all).
void atx_dead_letter_forget(const uint8 id[16]);
