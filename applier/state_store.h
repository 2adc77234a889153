// The applier's local delivery state in RocksDB (--state-dir).
//
// What is authoritative where (docs/applier-state.md explains it at length):
//  - the server: origin progress (which stream positions are applied, durably), the idempotency
//    keys that were applied (atx.idempotency_key) and the dead letters (atx.dead_letter). These are
//    written in the apply transaction itself, so they can never disagree with what committed.
//  - RocksDB: the per-message delivery history (attempts, last error, when), the retry state of a
//    message that is being retried, and which message applied an idempotency key (for
//    `atx-applier show`).
// The server is the judge of what was applied (atx.applied, checked in the apply transaction), so
// an "applied" entry here that the server later lost (asynchronous commit + server crash) only
// describes history: it never suppresses the re-apply.
#pragma once

#include <chrono>
#include <cstdint>
#include <stdexcept>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace atx::applier {

enum class DeliveryStatus : uint8_t {
    Applied = 1,    // committed by the server (as far as this applier knows)
    Duplicate = 2,  // its idempotency key had been applied already; nothing executed
    Retrying = 3,   // a transient failure; will be tried again
    Dead = 4,       // dead-lettered (permanent failure or retry budget spent)
};
const char* to_string(DeliveryStatus s);

struct DeliveryRecord {
    std::string message_id;   // UUID text
    std::string key;          // idempotency key, empty if none
    uint64_t source_lsn = 0;  // LSN of the message in the stream
    DeliveryStatus status = DeliveryStatus::Applied;
    uint32_t attempts = 0;
    std::string last_sqlstate;
    std::string last_error;
    int64_t updated_at_us = 0;  // unix microseconds
};

// Thrown on any RocksDB failure (open, write, read). The caller stops confirming to the slot.
class StateError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// How much delivery history the store keeps (docs/applier-state.md, "Retention"). A record goes
// when it is older than max_age_days (by updated_at_us) or is not among the newest max_records of
// its scope (by source LSN), whichever removes more; Retrying records always stay (they carry a
// retry budget). 0 switches a limit off; both 0 keep everything.
struct RetentionPolicy {
    uint32_t max_age_days = 7;
    uint64_t max_records = 1000000;  // per scope (database)
    bool enabled() const { return max_age_days != 0 || max_records != 0; }
};

class StateStore {
public:
    // Opens (creating if missing) the RocksDB at dir. Column families, in fixed order:
    // default, deliveries (scope/message_id -> record), keys (scope/key -> message_id),
    // by_lsn (scope/be64 lsn/message_id -> ""), meta (scope/name -> value).
    static std::unique_ptr<StateStore> open(const std::string& dir);
    ~StateStore();  // stops the retention thread, flushes the WAL (not after a failed write), cancels
                    // background work, closes handles

    // scope = one database's namespace, e.g. "db16384" (database oid).
    // Writes all records in one WriteBatch; sync=true fsyncs RocksDB's WAL before returning.
    // After a failed write (e.g. the disk is full) every write (record/put_meta) first
    // recovers the store (DB::Resume(), then close and reopen) and throws StateError until that
    // works; reads go on meanwhile. All methods are safe to call from several threads.
    void record(const std::string& scope, const std::vector<DeliveryRecord>& records, bool sync);

    std::optional<DeliveryRecord> find_message(const std::string& scope, const std::string& message_id) const;
    // Message id that applied this key, if this store has seen it applied.
    std::optional<std::string> find_key(const std::string& scope, const std::string& key) const;

    void put_meta(const std::string& scope, const std::string& name, const std::string& value);
    std::optional<std::string> get_meta(const std::string& scope, const std::string& name) const;

    // The records of a scope with from <= source LSN < to (for the operator CLI, tests and the
    // failover check), in LSN order.
    std::vector<DeliveryRecord> list(const std::string& scope, size_t limit = SIZE_MAX, uint64_t from = 0,
                                     uint64_t to = UINT64_MAX) const;

    // Approximate live size in bytes.
    uint64_t approximate_size() const;

    // Deletes what the policy no longer keeps, oldest first, with the records' key and LSN index
    // entries; returns how many records went. Works in chunks, each holding the write lock only
    // for its own reads and one unsynced write, so a record() waits for one chunk at most.
    // now_us: unix microseconds.
    size_t sweep(const RetentionPolicy& policy, int64_t now_us);
    // Runs sweep() every `interval` on a thread of its own until the store is destroyed (which
    // interrupts a sweep between two chunks). No-op for a disabled policy or a second call.
    void start_retention(const RetentionPolicy& policy, std::chrono::milliseconds interval);
    // Records held (all scopes, or one), counted at open and kept by every write.
    uint64_t record_count() const;
    uint64_t record_count(const std::string& scope) const;
    // Records deleted by sweep() since open.
    uint64_t swept_count() const;

private:
    struct Impl;
    explicit StateStore(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
};

}  // namespace atx::applier
