// One apply session's thread: takes a lane's batch from the dispatcher, applies it, reports.
//
// A worker never decides what may be confirmed; it tells the database worker which messages
// were handled by which commit (on_handled), and the dispatcher what to run next. A lost
// connection makes the batch suspect (poison detection, dispatcher.h) and the worker reconnects
// on its own; the stream goes on.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "apply_session.h"
#include "config.h"
#include "dispatcher.h"
#include "metrics.h"
#include "retry_policy.h"
#include "state_store.h"

namespace atx::applier {

struct WorkerContext {
    const Config& cfg;
    std::string dbname;
    std::string log;    // "db=<name>" prefix
    std::string scope;  // RocksDB scope of the database
    Dispatcher& dispatcher;
    StateStore& store;
    DbMetrics& metrics;
    SessionSettings settings;
    RetryPolicy policy;
    // Messages handled by a commit ending at or before commit_lsn (0: durable already).
    std::function<void(const std::vector<Pending>&, Lsn commit_lsn)> on_handled;
    // The server refused what the applier sent (rejected): the database must start over.
    std::function<void(const std::string&)> on_fatal;
    // Apply commits are synchronous (durable on return): the durability rule, which the
    // database worker may change while the workers run (--durability auto).
    std::atomic<bool> sync_commits{false};
};

class ApplyWorker {
public:
    ApplyWorker(WorkerContext& ctx, WorkerKind kind, int number);
    ~ApplyWorker();

    void start();
    // Finish the batch in flight, then exit. cancel(): also cancel the statement in flight.
    void stop();
    void cancel();
    void join();
    bool exited() const { return exited_.load(); }
    bool busy() const { return busy_.load(); }

private:
    void run();
    void run_batch(const Batch& b);
    void handle_results(const Batch& b, const std::vector<ApplyResult>& results, Lsn commit_lsn);
    void handle_loss(const Batch& b, const PgError& e);
    // Runs a message that needs a top-level statement; false when the session broke.
    bool run_top_level(const Pending& p, const ApplyResult& r, Lsn* commit_lsn, DeliveryRecord* rec);
    // Dead-letters b's single message without running it; false when the session broke.
    bool condemn(const Batch& b, const std::string& sqlstate, const std::string& why);
    void record(const std::vector<DeliveryRecord>& records, bool sync);

    WorkerContext& ctx_;
    const WorkerKind kind_;
    const int number_;
    ApplySession session_;
    std::thread thread_;
    std::atomic<bool> stop_{false};
    std::atomic<bool> busy_{false};
    std::atomic<bool> exited_{false};
};

}  // namespace atx::applier
