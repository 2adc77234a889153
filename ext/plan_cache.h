// Saved SPI plans for applied statements, per apply backend (plan_cache.cc).
//
// The applier sends the same few statements over and over (audit inserts, status upserts);
// parsing and planning each one again costs more than executing it. A parse depends on the
// settings it was made under (standard_conforming_strings changes what the text means;
// DateStyle, TimeZone and transform_null_equals change the constants and operators in the
// tree), so a plan is reused only for the same statement, parameter types, role and carried
// settings: nothing parsed for one role or under one set of settings is run for another.
// Permissions are still checked at each execution, as the user current then, and PostgreSQL
// re-plans after DDL on what a plan uses.
//
// Memory is bounded: a plan larger than kMaxPlanBytes is used once and freed, and the cache
// as a whole keeps at most kMaxCacheBytes (least recently used plans go first).
#pragma once

#include "pg_headers.h"

#include "codec_bridge.h"

extern "C" {
#include "nodes/params.h"
}

// Runs m's statement (already bound: params, types) through a plan saved under its key, with the
// rows going to dest (None_Receiver: discarded as produced). *command_tag is set to the last
// statement's tag (e.g. "INSERT"); SPI_processed counts the last statement's rows. Must be
// called inside an SPI connection, with m's settings in force; errors propagate (ereport) and
// leave the cache consistent. Returns the SPI result code.
int atx_execute_cached(const AtxMessageC* m, Oid* types, ParamListInfo params, DestReceiver* dest,
                       const char** command_tag);

// Runs sql (no parameters) without caching (fixed statements of pg_atx itself).
int atx_execute_uncached(const char* sql, DestReceiver* dest, const char** command_tag);

// Bytes the cache holds (plans and keys), for the backend's memory report.
Size atx_plan_cache_bytes(void);
