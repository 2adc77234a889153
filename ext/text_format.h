// Human-readable renderings of a decoded message, shared by the output
// plugin's text format and atx.decode().
#pragma once

#include "codec_bridge.h"

// Appends the hex form "\x0102..." of len bytes.
void atx_append_hex(StringInfo out, const char* data, size_t len);

// Appends a parameter's value as text. safe_convert: binary values of
// built-in, non-domain types are converted back with receive + output (safe
// in a decoding context: no user code, catalog lookups only); everything else
// binary is shown as hex. Outside a transaction (a walsender decoding a
// non-transactional message has none) only a fixed list of catalog-free
// built-in types is converted; the rest is hex.
void atx_append_param_value(StringInfo out, const AtxParamC* p, bool safe_convert);
