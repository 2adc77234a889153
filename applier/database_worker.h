// One thread per database: connect, ensure slot and origin, reconcile the local state, stream,
// batch, apply, confirm, and reconnect with backoff. A failing database never stalls another.
//
// Positions (all LSNs are message LSNs = dataStart of the 'w' frame):
//   applied_upto     origin progress of the apply session (committed, maybe not yet durable);
//                    messages at or below it are skipped
//   durable          pg_replication_origin_progress(origin, true): commits that survive a crash
//   need_durable     LSN of the last message whose handling needed a server commit
//   last_handled     highest LSN handled (applied, duplicate, dead-lettered or skipped)
// The flush position sent to the slot is
//   durable >= need_durable ? max(last_handled, keepalive walEnd if nothing is pending) : durable
// and never decreases. A position whose apply commit may not be durable is never confirmed.
#pragma once

#include <atomic>
#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "apply_session.h"
#include "config.h"
#include "message.h"
#include "metrics.h"
#include "replication_stream.h"
#include "retry_policy.h"
#include "state_store.h"

namespace atx::applier {

enum class WorkerResult {
    Running,
    Finished,  // --once: idle and everything confirmed
    Stopped,   // shutdown requested
    SlotLost,  // the slot's wal_status is 'lost': its unconsumed messages are gone
    Failed,    // --once only: the database is not ready (extension missing, newer message format)
};

class DatabaseWorker {
public:
    DatabaseWorker(const Config& cfg, std::string dbname, StateStore& store, const std::atomic<bool>& stop);
    ~DatabaseWorker();

    void start();
    void join();
    bool done() const { return done_.load(); }
    WorkerResult result() const { return result_.load(); }
    // Shutdown grace period is over: cancel the statement in flight and do not commit it.
    void cancel_in_flight();

private:
    struct Pending {
        Lsn lsn = 0;
        std::string payload;
        std::optional<Message> msg;    // nullopt: undecodable (apply_message reports 22P03)
        bool skip = false;             // handled without the server (already applied / duplicate)
    };

    void run();
    WorkerResult session();
    void open_session();
    void check_slot(bool initial);
    void handle_frame(const std::string& data);
    void handle_message(Lsn lsn, std::string_view payload);
    void apply_batch();
    void apply_singly();
    void after_commit(std::vector<DeliveryRecord> records, Lsn last);
    void write_state(const std::vector<DeliveryRecord>& records, bool sync);
    void send_status(bool query_durable);
    Lsn flush_position() const;
    bool idle_and_confirmed();
    // Sleeps in short ticks, throwing Interrupted on stop; keep_walsender: also sends standby
    // status updates on schedule, so that a wait while streaming does not time the walsender out.
    void sleep_interruptible(std::chrono::milliseconds d, bool keep_walsender = false);
    void teardown();
    std::string id_of(const Pending& p) const;

    const Config& cfg_;
    const std::string dbname_;
    const std::string log_;  // "db=<name>" prefix of every line
    StateStore& store_;
    const std::atomic<bool>& stop_;
    DbMetrics& m_;  // counters and state for /metrics, /readyz (metrics.h)
    RetryPolicy policy_;

    std::thread thread_;
    std::atomic<bool> done_{false};
    std::atomic<WorkerResult> result_{WorkerResult::Running};
    std::atomic<bool> cancelled_{false};

    ApplySession apply_;
    ReplicationStream stream_;

    // Per connection.
    uint32_t oid_ = 0;
    std::string slot_, origin_, scope_;
    Lsn applied_upto_ = 0, durable_ = 0, need_durable_ = 0, last_handled_ = 0;
    Lsn received_ = 0, keepalive_walend_ = 0, reported_flush_ = 0;
    bool state_broken_ = false;
    bool streamed_ = false;  // this session reached START_REPLICATION (resets the backoff)
    std::vector<Pending> batch_;
    std::chrono::steady_clock::time_point next_status_, next_slot_check_, last_data_;
};

}  // namespace atx::applier
