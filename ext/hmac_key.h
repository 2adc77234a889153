// The per-cluster HMAC key and HMAC-SHA256 over message bodies.
#pragma once

#include "atx_ext.h"

// File name of the key, relative to the data directory, unless atx.key_file names another.
#define ATX_KEY_FILE "pg_atx.key"
extern char* atx_key_file;  // atx.key_file (postmaster): absolute path, or "" for the default

// 32-byte HMAC key, loaded or created on first use.
#define ATX_KEY_LEN 32
const uint8* atx_hmac_key(void);
// HMAC-SHA256 of data under the cluster key into out[32].
void atx_hmac_sha256(const char* data, size_t len, uint8 out[32]);
// Constant-time comparison of two 32-byte MACs.
bool atx_mac_equal(const uint8* a, const uint8* b);
