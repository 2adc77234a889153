// Test-only fault points, compiled only into atx-applier-faults (ATX_FAULT_INJECTION), a binary
// that is never installed; the installed atx-applier has none and ignores ATX_FAULT.
//
// ATX_FAULT=<point>[:<n>] makes the process SIGKILL itself the n-th time (default: the first) it
// reaches <point>. Points:
//   mid_batch           half of a batch's apply_message calls were sent, COMMIT not yet sent
//   after_apply_commit  the apply COMMIT returned, the RocksDB write not yet done
//   after_state_write   the RocksDB write returned, the next slot confirmation not yet sent
//   before_confirm      a status update that advances the flush position is about to be sent
// ATX_BREAK=<name> switches on a deliberate bug, so that a test can show its checker catches it:
//   confirm_before_durable  an apply commit counts as durable as soon as it returns, whatever the
//                           durability rule: the slot may be confirmed past messages whose commits
//                           a crash or a failover loses (tools/atx soak must find the loss)
// Without ATX_FAULT_INJECTION, ATX_FAULT_POINT() compiles to nothing and ATX_BROKEN() to false.
// A file that uses ATX_FAULT_POINT must include this header itself (the build keys on it).
#pragma once

// applier/CMakeLists.txt compiles the files that include this header once per binary and every
// other file once for both; a file that gained the include since cmake last ran lands here.
#ifdef ATX_FAULT_SHARED_OBJECT
#error "this file includes fault.h but is compiled once for both binaries: re-run cmake"
#endif

namespace atx::applier {

#ifdef ATX_FAULT_INJECTION
void fault_point(const char* name);
bool broken(const char* name);
#define ATX_FAULT_POINT(name) ::atx::applier::fault_point(name)
#define ATX_BROKEN(name) ::atx::applier::broken(name)
#else
#define ATX_FAULT_POINT(name) ((void)0)
#define ATX_BROKEN(name) false
#endif

}  // namespace atx::applier
