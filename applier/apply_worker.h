// One apply session's thread: takes a lane's batch from the dispatcher, applies it, reports.
//
// A worker never decides what may be confirmed; it tells the database worker which messages
// were handled by which commit (on_handled), and the dispatcher what to run next. Its session
// serves one RunAs (dispatcher.h): a batch of another gets a fresh connection, and so does a
// session whose backend holds more memory than --session-memory-limit-mb.
//
// A lost connection is explained by facts only (never by what the connection said last, which a
// statement can imitate): the database worker's own termination of an overdue message, the
// server's apply registry (the backend exited while running message X), or a server restart.
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

// What the database worker's watchdog sees of a worker (read from its thread).
struct WorkerActivity {
    int backend_pid = 0;                          // 0: not connected
    std::chrono::steady_clock::time_point since;  // the batch in flight began (epoch: none)
};

class ApplyWorker {
public:
    ApplyWorker(WorkerContext& ctx, WorkerKind kind, int number);
    ~ApplyWorker();

    void start();
    // Finish the batch in flight, then exit. abandon(): also stop waiting for it (the database
    // worker ends its backend first; its transaction rolls back).
    void stop();
    void abandon();
    void join();
    bool exited() const { return exited_.load(); }
    bool busy() const { return busy_.load(); }
    WorkerActivity activity() const;
    // The database worker is about to end this worker's backend because the message at lsn
    // overstayed its limit (the loss that follows is that message's), or because the applier
    // stops (ending: the loss counts against nothing).
    void ending_for_overdue(Lsn lsn) { overdue_lsn_ = lsn; }
    void ending_for_stop() { ending_for_stop_ = true; }

private:
    void run();
    void run_batch(const Batch& b);
    void handle_results(const Batch& b, const std::vector<ApplyResult>& results);
    void handle_loss(const Batch& b, const PgError& e);
    void connect(bool settle = true);
    // Runs a message that needs a top-level statement; false when it did not run (no worker
    // share, the session broke): the caller gives the batch back.
    bool run_top_level(const Pending& p, const ApplyResult& r, const Batch& b, Lsn* commit_lsn, DeliveryRecord* rec);
    // Dead-letters b's single message without running it; false when the session broke.
    bool condemn(const Batch& b, Verdict v);
    void top_level(const Batch& b, size_t i, const ApplyResult& r);
    void record(const std::vector<DeliveryRecord>& records, bool sync);

    WorkerContext& ctx_;
    const WorkerKind kind_;
    const int number_;
    ApplySession session_;
    // Connections of the roles this worker served before, least recently used first (this
    // thread's only; session_ swaps with one of them when a batch of its role comes).
    std::vector<std::unique_ptr<ApplySession>> spare_;
    // A batch of `as` needs the session serving it: a spare's, or a new connection.
    void switch_to(const RunAs& as);
    std::thread thread_;
    std::atomic<bool> stop_{false};
    std::atomic<bool> busy_{false};
    std::atomic<bool> exited_{false};
    std::atomic<int64_t> busy_since_ns_{0};  // steady clock of the batch in flight, 0: none
    std::atomic<Lsn> overdue_lsn_{0};
    std::atomic<bool> ending_for_stop_{false};
};

}  // namespace atx::applier
