// The caller's settings carried by a message (guc_capture.cc).
#pragma once

#include "atx_ext.h"
#include "codec_bridge.h"

// The names that never travel.
bool atx_guc_denied(const char* name);

// The settings to carry from the current session (palloc'd array, *count entries).
AtxGucC* atx_capture_settings(int* count);

// Sets them, each with at most the right it was set with in the caller's session: inside the
// caller's GUC nest level of an apply (GUC_ACTION_SAVE: undone afterwards), or for a whole
// session (GUC_ACTION_SET: a non-atomic run's own worker).
void atx_restore_settings(const AtxGucC* gucs, int n, bool caller_is_superuser, GucAction action);
