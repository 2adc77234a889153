// Autonomous routines (issue 24; docs/usage.md "Autonomous routines", design.md): a function or
// procedure made autonomous keeps its OID, name, signature, owner, grants, settings and comment;
// its body moves to a companion routine, "the body", in schema atx_autonomous, and the routine
// itself becomes a C stub (atx_autonomous_call) that runs the body through atx-applier and waits.
//
// autonomous_catalog.cc: make_autonomous, make_ordinary, keeping routine and body in step (event
// triggers), the view's lookup. autonomous_call.cc: the stub, the result's encoding.
#pragma once

#include "atx_ext.h"

#define ATX_AUTONOMOUS_SCHEMA "atx_autonomous"
#define ATX_AUTONOMOUS_SYMBOL "atx_autonomous_call"

// The body's name for a routine named name in schema nspname: "nspname.name", or when that is
// longer than an identifier, its first bytes and a hash of all of it. Stable across dump and
// restore (OIDs are not), so a restored routine finds its restored body.
char* atx_autonomous_body_name(const char* nspname, const char* name);

// The body of routine (its pg_proc row), InvalidOid when there is none: first the routine's
// dependent in atx_autonomous (survives a rename of the routine until the event trigger renames
// the body), else by the name atx_autonomous_body_name gives and the same argument types.
Oid atx_autonomous_find_body(HeapTuple routine);

// Is this pg_proc row an autonomous routine (C, prosrc atx_autonomous_call)?
bool atx_autonomous_is_stub(HeapTuple routine);
