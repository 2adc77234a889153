// Validation of a statement at the call (validate.cc).
#pragma once

#include "atx_ext.h"

extern bool atx_validate;  // atx.validate

// Raises (42601, 42P01, 42703, 42501, 0A000 for the caller's temporary tables...) what could
// never run as the current user; returns when it could. A no-op with atx.validate = off.
void atx_validate_statement(const char* statement, int nargs, const Oid* types);
