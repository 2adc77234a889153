// What each apply backend is running, in shared memory (apply_registry.cc; preload only).
//
// The facts the applier acts on when user code misbehaves come from here, never from anything
// a statement can send: which message an apply backend runs, since when and until when
// (its deadline), and which message it was running when it exited. The applier reads them
// (atx.apply_activity) and ends a message that overstays its limit from outside the statement
// (atx.terminate_overdue), whatever the statement catches.
//
// Slots: one per apply backend (an apply session, a non-atomic worker), plus room for the
// records of backends that exited while running a message (kept until the slot is needed).
#pragma once

#include "atx_ext.h"

// _PG_init, only while shared_preload_libraries is processed.
void atx_registry_install_shmem_hooks(void);
bool atx_registry_available(void);

// This backend applies messages of its database: registered once (a slot of its own, freed or
// turned into an exit record when it exits).
void atx_registry_join(void);
// This backend now runs the message (lsn, id) as role; deadline_ms after now (0: none).
void atx_registry_begin(XLogRecPtr lsn, const uint8 id[16], Oid role, int deadline_ms);
// ... and is done with it.
void atx_registry_end(void);

// The live apply backends of this database other than this one (pids), at most max: an
// atx_exec caller checks them for a deadlock with itself.
int atx_registry_pids(int* out, int max);
