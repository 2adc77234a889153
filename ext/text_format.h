// Human-readable renderings of a decoded message, shared by the output
// plugin's text format and atx.decode().
#pragma once

#include "codec_bridge.h"

// Appends the hex form "\x0102..." of len bytes.
void atx_append_hex(StringInfo out, const char* data, size_t len);

// Appends a parameter's value as text: a text-format value as it is; a binary one converted
// back only for a fixed list of built-in types whose functions need no catalog and accept what
// their send functions wrote (numbers, text, uuid, json, dates and times ...); anything else as
// hex. Never runs a type's receive function otherwise, so it cannot fail for a value.
void atx_append_param_value(StringInfo out, const AtxParamC* p);
