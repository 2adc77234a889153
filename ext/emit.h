// Building and writing messages (emit.cc), shared by atx_log and atx_exec.
#pragma once

#include "atx_ext.h"

extern bool atx_allow_in_read_only;  // atx.allow_in_read_only (superuser)

// Runs every refusal of atx_log, validates the statement (atx.validate), then builds and signs
// the message of fcinfo (statement at argument stmt_arg, the key at 0 when keyed, parameters
// after the statement) without writing it. id_out receives the message id; *payload_out /
// *len_out the signed payload (palloc'd). fname names the SQL function in errors.
void atx_build_message(FunctionCallInfo fcinfo, int stmt_arg, bool keyed, bool waited, const char* fname,
                       uint8 id_out[16], char** payload_out, size_t* len_out);

// The same for a statement and parameter values in hand (an autonomous routine's call): no key.
void atx_build_message_values(const char* statement, int nargs, const Datum* args, const Oid* types, const bool* nulls,
                              bool waited, const char* fname, uint8 id_out[16], char** payload_out, size_t* len_out);

// Writes a signed payload with the pg_atx origin and makes it durable as a COMMIT would be
// under the caller's synchronous_commit (once per batch inside atx._emit_batch_begin/_end).
// id (may be NULL) names the message in a warning.
XLogRecPtr atx_write_message(const char* payload, size_t len, const uint8* id);
