// A message's binary values are written by send functions and read back by receive functions,
// and for text those convert between the database's encoding and the session's client_encoding
// (pq_sendtext, pq_getmsgtext). The values belong to neither the caller's session nor the one
// that applies them, so they are written and read in the database's own encoding: the calls
// below switch the session's conversion off around them. Plain C style (see pg_guard.h).
#pragma once

#include "pg_headers.h"

// Switches client-side conversion off; returns what atx_wire_encoding_end must restore, or -1
// when the session already uses the database's encoding (nothing to restore, no PG_TRY needed).
int atx_wire_encoding_begin(void);
void atx_wire_encoding_end(int saved);

// A send function's output for one value, in the database's encoding.
bytea* atx_send_in_database_encoding(Oid typsend, Datum value);
// A receive function's result for one value that was sent in the database's encoding.
Datum atx_receive_in_database_encoding(Oid typreceive, StringInfo buf, Oid ioparam, int32 typmod);
