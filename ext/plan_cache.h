// Saved SPI plans for the statements atx.apply_message runs, per backend.
//
// The applier sends the same few statements over and over (audit inserts, status upserts);
// parsing and planning each one again costs more than executing it. Reusing a saved plan is safe
// across callers: permissions are checked when the plan is executed, as the user current then;
// PostgreSQL's plan cache re-plans when search_path differs, when row-level security depends on
// the role, and after DDL on what the plan uses.
#pragma once

#include "pg_headers.h"

// Like SPI_execute_with_args, through a plan saved under (statement, parameter types), with
// the rows going to dest (None_Receiver: discarded as produced). *command_tag is set to the
// last statement's tag (e.g. "INSERT"); SPI_processed counts the last statement's rows. Must be
// called inside an SPI connection; errors propagate (ereport) and leave the cache consistent.
int atx_execute_cached(const char* statement, int nargs, Oid* types, Datum* values, const char* nulls,
                       DestReceiver* dest, const char** command_tag);
