// Small helpers of the server-side SQL the extension runs itself.
#pragma once

#include "atx_ext.h"

// The plan in *slot, prepared from sql and kept (SPI_keepplan) on first use; raises if it cannot.
SPIPlanPtr atx_keep_plan(SPIPlanPtr* slot, const char* sql, int nargs, Oid* types);
// A uuid Datum (palloc'd in the current context) of 16 bytes.
Datum atx_uuid_datum(const uint8 id[16]);
