// The atx_exec waiter registry in shared memory (exec_shmem.cc); used by
// exec.cc (the waiting caller) and, through atx_ext.h, by apply.cc.
#pragma once

#include "atx_ext.h"

// Slot states.
#define ATX_EXEC_FREE 0
#define ATX_EXEC_WAITING 1  // registered before the message is written
#define ATX_EXEC_DONE 2     // outcome published by the apply backend's COMMIT

#define ATX_EXEC_MAX_APPLY_PIDS 64

// One waiter slot per backend (index MyBackendId - 1): a backend waits for
// at most one message at a time. All fields but cv under AtxExecShared.lock.
struct AtxExecSlot {
    ConditionVariable cv;
    int state;
    int waiter_pid;
    Oid dboid;
    uint8 id[16];
    // outcome (state DONE)
    char status[16];
    int sqlerrcode;
    int64 rows;
    char command[64];
    char error[1024];
    char detail[1024];
    char hint[512];
    bool has_result;
    bool truncated;
    int result_len;
    char result[FLEXIBLE_ARRAY_MEMBER];  // atx_exec_max_result_bytes + 1
};

struct AtxApplyPid {
    Oid dboid;
    int pid;
};

struct AtxExecShared {
    LWLock* lock;
    pg_atomic_uint32 n_waiting;  // slots in state WAITING or DONE: 0 means nobody waits
    int nslots;
    int max_result;
    Size stride;
    AtxApplyPid apply[ATX_EXEC_MAX_APPLY_PIDS];
    // followed by nslots slots of stride bytes
};

AtxExecShared* atx_exec_shared(void);
AtxExecSlot* atx_exec_slot(int i);
