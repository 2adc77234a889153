// What the apply side's SQL entry points share (apply_common.cc): who may call them, their
// search_path and SPI connection, and how a message that cannot be trusted is named.
#pragma once

#include "atx_ext.h"

#define ATX_APPLIER_ROLE "atx_applier"

// Raises 42501 unless the role that called the (SECURITY DEFINER) function is a superuser or
// a member of atx_applier. Checked inside each function too, not only by EXECUTE privilege.
void atx_check_applier(void);

// An apply entry point's frame: the caller checked, search_path pinned to pg_catalog, pg_temp in
// a GUC level of its own, SPI connected. SPI_finish deletes the SPI context: what the function
// returns is made in `caller` (atx_result_row) or copied out before atx_apply_leave.
struct AtxApplyFrame {
    int nest;
    MemoryContext caller;
};
AtxApplyFrame atx_apply_enter(void);
void atx_apply_leave(const AtxApplyFrame* f);

// A row of the caller's result type, made in the caller's context (survives atx_apply_leave).
Datum atx_result_row(const AtxApplyFrame* f, TupleDesc tupdesc, Datum* v, bool* nulls);
