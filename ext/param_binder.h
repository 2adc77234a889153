// A message's parameters as the executor takes them (param_binder.cc): one binder for every
// path that runs a message (an apply session, a non-atomic worker).
#pragma once

#include "atx_ext.h"
#include "codec_bridge.h"

extern "C" {
#include "nodes/params.h"
}

// Converts the parameters of m with their types' receive (binary) or input (text) functions, in
// the current memory context and as the current user (call it in the caller's context: a
// domain's check or a type's input function runs with the caller's rights). types[] (m->nparams
// entries) receives their type OIDs. NULL when m has no parameters. Raises 42704 for a type that
// no longer exists, 22P03 for bytes its receive function leaves unread.
ParamListInfo atx_bind_params(const AtxMessageC* m, Oid* types);
