// Waiting for a message's outcome (exec_wait.cc): atx_exec, and the autonomous routines that
// call through the same wait (autonomous_call.cc).
#pragma once

#include "atx_ext.h"

// What the apply side published for a waited message (palloc'd copies).
struct AtxExecResult {
    char id_text[37];
    char* json;    // the jsonb text atx_exec returns
    char* status;  // "applied", "duplicate", "failed"
    int sqlerrcode;
    char* error;
    char* detail;  // NULL: none
    char* hint;    // NULL: none
};

// 55000 unless pg_atx was preloaded (the waiters live in its shared memory).
void atx_exec_require_preload(const char* fname);

// Writes a waited message built by atx_build_message* and waits until the applier committed or
// dead-lettered it durably; raises 40P01, 55P03, 57014 as atx_exec does (docs/exec.md).
void atx_exec_write_and_wait(const char* payload, size_t len, const uint8 id[16], const char* fname,
                             AtxExecResult* out);
