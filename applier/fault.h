// Test-only fault points (compiled only with ATX_FAULT_INJECTION).
//
// ATX_FAULT=<point>[:<n>] makes the process SIGKILL itself the n-th time (default: the first) it
// reaches <point>. Points:
//   mid_batch           half of a batch's apply_message calls were sent, COMMIT not yet sent
//   after_apply_commit  the apply COMMIT returned, the RocksDB write not yet done
//   after_state_write   the RocksDB write returned, the next slot confirmation not yet sent
//   before_confirm      a status update that advances the flush position is about to be sent
// Without ATX_FAULT_INJECTION, ATX_FAULT_POINT() compiles to nothing.
#pragma once

namespace atx::applier {

#ifdef ATX_FAULT_INJECTION
void fault_point(const char* name);
#define ATX_FAULT_POINT(name) ::atx::applier::fault_point(name)
#else
#define ATX_FAULT_POINT(name) ((void)0)
#endif

}  // namespace atx::applier
