// A thread that asks the server, per database, for what the replication stream does not tell: the
// slot's wal_status and activity, the lag in bytes (pg_current_wal_flush_lsn() minus the slot's
// confirmed_flush_lsn) and the number of rows in atx.dead_letter, every --monitor-interval-ms, on
// a connection of its own (application_name 'atx-applier monitor'). It writes the DbMetrics
// fields marked "From the ServerMonitor" in metrics.h.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace atx::applier {

// Asks the server about each database's slot every `interval_ms`.
class ServerMonitor {
public:
    ServerMonitor(std::string conninfo, std::vector<std::string> dbnames, uint32_t interval_ms);
    ~ServerMonitor();
    void start();
    void stop();
    // Stops and joins unless the thread is stuck in a query longer than `limit` (then false: the
    // object must be leaked, the thread still uses it).
    bool stop_within(std::chrono::milliseconds limit);

private:
    void run();
    std::string conninfo_;
    std::vector<std::string> dbnames_;
    uint32_t interval_ms_;
    std::thread thread_;
    std::mutex mu_;
    std::condition_variable cv_;
    bool stop_ = false;
    bool finished_ = false;
};

}  // namespace atx::applier
