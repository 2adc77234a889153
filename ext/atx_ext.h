// What every file of pg_atx.so shares: the server headers and the module's own settings.
// Each area has its own header (emit.h, execute.h, exec_shmem.h, ...).
#pragma once

#include "pg_headers.h"

// Settings defined in module.cc (the rest live with the code that reads them).
extern char* atx_capture_gucs;    // atx.capture_gucs: further GUC names to carry
extern int atx_max_payload_size;  // atx.max_payload_size: bytes, MAC included

// Replication origin "pg_atx" (origin.cc). Requires a transaction. missing_ok=false raises
// 55000 with a hint when the origin does not exist.
RepOriginId atx_emit_origin_id(bool missing_ok);

// The extension's version (the build defines it from the project's one version).
#ifndef ATX_EXTENSION_VERSION
#define ATX_EXTENSION_VERSION "0.3"
#endif

// printf("%X/%X", ATX_LSN_ARGS(lsn)): LSN_FORMAT_ARGS's type assertion is C only.
#define ATX_LSN_ARGS(lsn) (uint32)((uint64)(lsn) >> 32), (uint32)(lsn)
