// The per-cluster HMAC key and HMAC-SHA256 over message bodies.
#pragma once

#include "atx_ext.h"

// File name of the key, relative to the data directory.
#define ATX_KEY_FILE "pg_atx.key"
