// The watchdog: every message's time limit, enforced from outside its statement.
//
// A statement may catch the cancel its own time limit sends and run on. Past its deadline (the
// server's apply registry) and --terminate-grace-ms, its backend is ended: a FATAL no statement
// can catch. The watchdog is a thread with a connection of its own, and that connection only
// reads the registry (shared memory under an LWLock) and signals a backend: nothing a message
// can hold (a row lock, a table lock, a busy stream) stands between a deadline and its
// enforcement. It ran in the database thread's loop before, where a control query waiting on a
// lock that an apply transaction held (atx.park behind atx.prune behind a running batch) held
// the limit off as long as the statement liked (fuzz seed 21, round 3: 32 s for a 3 s limit).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "apply_worker.h"
#include "pg_conn.h"

namespace atx::applier {

class DeadlineWatch {
public:
    // The workers to watch, as they are now (called from the watch thread; the database thread
    // adds and removes workers, so it hands out shared references under its own lock).
    using Workers = std::function<std::vector<std::shared_ptr<ApplyWorker>>()>;

    DeadlineWatch(std::string conninfo, std::string dbname, std::string log, uint32_t limit_ms, uint32_t grace_ms,
                  Workers workers);
    ~DeadlineWatch() { stop(); }
    DeadlineWatch(const DeadlineWatch&) = delete;
    DeadlineWatch& operator=(const DeadlineWatch&) = delete;

    // Connects (throws PgError if it cannot), then watches from a thread of its own.
    void start();
    void stop();

private:
    void connect();
    void run();
    void round();

    const std::string conninfo_, dbname_, log_;
    const uint32_t limit_ms_, grace_ms_;
    const Workers workers_;
    PgConn conn_;
    std::thread thread_;
    std::mutex mu_;
    std::condition_variable cv_;
    bool stop_ = false;
    std::chrono::steady_clock::time_point last_error_{};
};

}  // namespace atx::applier
