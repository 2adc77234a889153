// Parked messages (parked.cc): a message that waits behind a long-running statement of its own
// lane or role would hold the slot, and with it the WAL of every later message, for as long as
// that statement runs. atx-applier parks it instead (atx.park): its payload is copied into its
// atx.applied record (status 'parked') in a transaction of its own, the slot may then move past
// it, and it runs later from that copy. The transaction that handles it replaces the record
// (atx_applied_update, atx_applied_reclaim), which clears the payload. docs/design.md.
// Must be called inside an SPI connection, as the extension owner.
#pragma once

#include "atx_ext.h"

// Is any message parked in this database? (One index probe: a batch asks once.)
bool atx_parked_any(void);

// The payload parked for the message at lsn (palloc'd); false when none is.
bool atx_parked_payload(XLogRecPtr lsn, char** payload, size_t* len);
// Is the message at lsn parked?
bool atx_parked_at(XLogRecPtr lsn);
