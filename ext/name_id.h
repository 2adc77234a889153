// Name-based message ids (UUID version 5 layout over SHA-256): the same name always gives the
// same id, so a retried or re-read message is recognised in atx.applied.
#pragma once

#include "atx_ext.h"

// The id of name (under namespace_label, which keeps different kinds of names apart).
void atx_name_id(const char* namespace_label, const uint8* name, size_t len, uint8 out[16]);
