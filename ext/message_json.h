// A decoded message as JSON (message_json.cc): atx.decode(), dead letters.
#pragma once

#include "codec_bridge.h"

// {id, database_oid, role_oid, role, session_user, caller_xid, emitted_at, depth, lane, waited,
//  gucs {name: value}, statement, params [...], key}
char* atx_message_json(const AtxMessageC* m);
// The parameters alone: [{type, type_oid, null, binary, value}, ...]; value is text, binary
// values of built-in types converted back, others \x hex.
char* atx_params_json(const AtxMessageC* m);
