// The pg_atx slot of a database, read from shared memory (slot_check.cc).
#pragma once

#include "atx_ext.h"

// Is there an in-use, valid logical slot with plugin pg_atx for this database?
bool atx_have_slot_for_database(Oid dboid);
// The confirmed_flush_lsn of slot pg_atx_<dboid>; false when there is no such slot.
bool atx_slot_confirmed_flush(Oid dboid, XLogRecPtr* out);
// "pg_atx_<dboid>" into buf (NAMEDATALEN).
void atx_slot_name(Oid dboid, char* buf);
