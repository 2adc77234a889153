// One thread per database: the stream, the apply sessions, what is confirmed.
//
// A session of the worker:
//   1. control connection: database oid, extension version, the slot (atx.ensure_slot), its
//      wal_status, the durability rule (docs/applier.md), the failover check;
//   2. replication connection: IDENTIFY_SYSTEM, START_REPLICATION from the slot's confirmed
//      position (another applier streaming it makes this one a standby: 55006);
//   3. apply workers (--apply-sessions, plus nested sessions on demand) take lanes from the
//      dispatcher; this thread reads frames, hands messages to the dispatcher, tracks progress,
//      confirms (progress.h), prunes atx.applied and wakes atx_exec callers whose outcome became
//      durable when the server cannot wake them at commit;
//   4. the watchdog (deadline_watch.h), a thread and connection of its own, ends an apply backend
//      whose message overstays its time limit, whatever this thread is waiting for.
// Any error of the stream or the control connection ends the session; the workers are stopped
// and a new session starts after a short, capped backoff. A failing database never stalls
// another.
#pragma once

#include <unordered_map>
#include <unordered_set>

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "apply_worker.h"
#include "config.h"
#include "deadline_watch.h"
#include "dispatcher.h"
#include "metrics.h"
#include "pg_conn.h"
#include "progress.h"
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
    // Shutdown grace period is over: end the apply sessions in flight (their batches roll back).
    void cancel_in_flight();

private:
    void run();
    WorkerResult session();
    void open_control();
    void check_slot(bool initial);
    void check_failover();
    void start_workers();
    void stop_workers(bool cancel);
    void end_backends(const std::vector<ApplyWorker*>& ws);
    std::vector<std::shared_ptr<ApplyWorker>> all_workers();
    void maybe_grow_nested();
    void handle_frame(const std::string& data);
    void handle_message(Lsn start, Lsn end, std::string_view payload);
    Pending pending_of(Lsn start, Lsn end, std::string_view payload);
    void load_parked();
    std::vector<Lsn> add_parked(const PgResult& rows);
    void find_unsent(Lsn upto);
    void end_unsent_check(Lsn first_sent);
    void unsent_check_failed(const PgError& e);
    Lsn confirmable() const;
    void load_retrying();
    void maybe_park(std::chrono::steady_clock::time_point now);
    void on_handled(const std::vector<Pending>& items, Lsn commit_lsn);
    void poll_durability();
    void follow_synchronous_standbys(bool log_change);
    void send_status();
    bool idle_and_confirmed();

    const Config& cfg_;
    const std::string dbname_;
    const std::string log_;  // "db=<name>" prefix of every line
    StateStore& store_;
    const std::atomic<bool>& stop_;
    DbMetrics& m_;
    RetryPolicy policy_;
    Dispatcher dispatcher_;

    std::thread thread_;
    std::atomic<bool> done_{false};
    std::atomic<WorkerResult> result_{WorkerResult::Running};
    std::atomic<bool> cancelled_{false};

    // Per session.
    PgConn control_;
    PgConn prune_;  // atx.prune() runs here, asynchronously: a long DELETE must not stall the stream
    ReplicationStream stream_;
    std::unique_ptr<WorkerContext> ctx_;
    // Changed by this thread only, under pools_mu_: the watchdog reads them from its own thread.
    std::vector<std::shared_ptr<ApplyWorker>> workers_;
    std::vector<std::shared_ptr<ApplyWorker>> nested_;
    std::mutex pools_mu_;
    std::unique_ptr<DeadlineWatch> watch_;
    std::mutex progress_mu_;
    Progress progress_;
    std::mutex fatal_mu_;
    std::string fatal_;
    std::atomic<bool> has_fatal_{false};
    uint32_t oid_ = 0;
    std::string slot_, scope_;
    bool sync_commits_ = false;   // apply commits are synchronous: durable on return (auto: may change)
    bool standby_flush_ = false;  // durability = flushed by every streaming standby
    Lsn slot_confirmed_ = 0;      // the slot's confirmed_flush_lsn when the session began
    Lsn reported_flush_ = 0;
    bool streamed_ = false;
    std::unordered_set<Lsn> parked_lsns_;                // parked before this stream began: their copies run
    std::unordered_map<Id, uint32_t, IdHash> retrying_;  // attempts of messages being retried when
                                                         // this stream began (the state store says)
    Lsn parked_load_lsn_ = 0;                            // the server's WAL position when they were read
    bool unsent_check_ = false;  // after a timeline change, until the stream sends a message (find_unsent)
    Lsn unsent_from_ = 0;        // the WAL before it was read for messages the stream skipped
    std::chrono::steady_clock::time_point next_status_, next_durability_, next_slot_check_, next_prune_,
        next_rule_check_, last_data_, nested_wanted_since_, next_park_, last_park_error_, next_unsent_scan_,
        last_unsent_error_, last_prune_error_;
    // A stamped commit position the flush has not reached, and since when (nudge_flush()).
    Lsn stalled_at_ = 0;
    std::chrono::steady_clock::time_point stalled_since_, last_nudge_;
    void nudge_flush(Lsn oldest);
    // The slot behind one message for longer than a message may run (slot_held()).
    Lsn held_lsn_ = 0;
    std::chrono::steady_clock::time_point held_since_, next_held_report_;
    void slot_held(std::chrono::steady_clock::time_point now);
};

}  // namespace atx::applier
