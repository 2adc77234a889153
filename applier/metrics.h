// Process-wide metrics of atx-applier, rendered in the Prometheus text format on /metrics, and
// the liveness / readiness rules of /healthz and /readyz (docs/operations.md lists every metric).
//
// Everything a DatabaseWorker updates is an atomic in its DbMetrics (metrics().db(name)); no lock
// on the hot path. The ServerMonitor (server_monitor.h) fills in what the stream does not tell.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace atx::applier {

// What a database's worker is doing.
enum class DbState : int {
    Starting = 0,  // thread not yet connected
    Connecting,    // (re)connecting, or waiting between attempts after an error
    Streaming,     // START_REPLICATION succeeded; applying
    Standby,       // another applier holds the slot / origin (55006): waiting to take over
    NotReady,      // extension missing, foreign slot plugin, newer message format
    SlotLost,      // wal_status 'lost': stopped for good
    Stopped,       // worker exited
};
const char* to_string(DbState s);

int64_t wall_now_us();  // unix microseconds

// Cumulative histogram with fixed buckets (seconds).
class Histogram {
public:
    static constexpr std::array<double, 13> kBounds = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                                       0.25,  0.5,    1.0,   2.5,  5.0,   10.0};
    void observe(double seconds);
    // Appends the _bucket/_sum/_count lines for `name{labels,le=...}`.
    void render(std::string& out, const std::string& name, const std::string& labels) const;

private:
    std::array<std::atomic<uint64_t>, kBounds.size() + 1> buckets_{};  // last: +Inf only
    std::atomic<uint64_t> count_{0};
    std::atomic<uint64_t> sum_ns_{0};
};

struct DbMetrics {
    explicit DbMetrics(std::string name) : dbname(std::move(name)) {}
    const std::string dbname;

    // Counters (worker).
    std::atomic<uint64_t> received{0};            // message frames received from the slot
    std::atomic<uint64_t> applied{0};             // executed and committed
    std::atomic<uint64_t> retried{0};             // failed attempts that were retried (transient)
    std::atomic<uint64_t> dead_lettered{0};       // written to atx.dead_letter
    std::atomic<uint64_t> duplicate{0};           // not executed: key applied before / id seen applied
    std::atomic<uint64_t> rejected{0};            // dead letters of payloads that did not decode or authenticate
    std::atomic<uint64_t> reconnects{0};          // sessions that ended in an error and were restarted
    std::atomic<uint64_t> batches{0};             // apply transactions committed
    std::atomic<uint64_t> backend_losses{0};      // apply sessions lost while a batch ran
    std::atomic<uint64_t> overdue_terminated{0};  // apply backends ended because a message overstayed its limit
    std::atomic<uint64_t> session_switches{0};    // fresh apply sessions for a batch of another role
    std::atomic<uint64_t> session_recycles{0};    // apply sessions ended for holding too much memory
    std::atomic<uint64_t> parked_total{0};        // messages copied into the server so the slot could pass them
    std::atomic<uint64_t> lost_found{0};          // handled messages a new primary had no record of
    std::atomic<uint64_t> repaired{0};            // ... of which applied again from its WAL
    std::atomic<uint64_t> lost{0};                // ... of which lost for good (WAL gone)
    std::atomic<uint64_t> queued{0};              // messages waiting in their lanes (gauge)
    std::atomic<uint64_t> in_flight{0};           // messages in running batches (gauge)
    std::atomic<uint64_t> suspects{0};            // messages that run alone after a backend loss (gauge)
    std::atomic<uint64_t> parked{0};              // parked messages not handled yet (gauge)
    Histogram apply_seconds;                      // duration of one apply transaction (BEGIN..COMMIT)

    // State (worker).
    std::atomic<int> state{static_cast<int>(DbState::Starting)};
    std::atomic<bool> attempted{false};         // the first connection attempt is over (sd_notify READY)
    std::atomic<int64_t> last_tick_us{0};       // the worker's loop ran (liveness)
    std::atomic<uint64_t> last_applied_lsn{0};  // last message handled by a commit
    std::atomic<uint64_t> confirmed_lsn{0};     // flush position last sent to the walsender
    std::atomic<uint64_t> received_lsn{0};
    std::atomic<int64_t> last_applied_emit_us{0};  // unix us: emit time of the last applied message
    std::atomic<int64_t> last_applied_at_us{0};    // unix us: when it was committed
    std::atomic<int64_t> pending_emit_us{0};       // emit time of the oldest message waiting; 0 none

    // From the ServerMonitor.
    std::atomic<bool> server_up{false};
    std::atomic<int64_t> lag_bytes{-1};     // -1 unknown
    std::atomic<int64_t> dead_letters{-1};  // rows in atx.dead_letter, -1 unknown
    std::atomic<int> slot_active{-1};       // -1 unknown / missing

    void tick() { last_tick_us.store(wall_now_us(), std::memory_order_relaxed); }
    void set_state(DbState s);
    DbState get_state() const { return static_cast<DbState>(state.load()); }
    void set_error(std::string e);
    std::string error() const;
    void set_wal_status(std::string s);
    std::string wal_status() const;

    // Message flow bookkeeping for the lag in seconds.
    void message_queued(int64_t emit_pg_us);  // a message entered the batch (0: emit time unknown)
    void messages_applied(int64_t last_emit_pg_us, uint64_t last_lsn);  // a commit covered them
    void queue_drained() { pending_emit_us.store(0); }
    // Seconds the stream is behind: while messages wait, now minus the oldest waiting message's
    // emit time; otherwise the transit time (commit minus emit) of the last applied message.
    double lag_seconds(int64_t now_us) const;

private:
    mutable std::mutex mu_;
    std::string error_, wal_status_ = "unknown";
};

class Metrics {
public:
    // The databases' entries are created once (by main, before the workers start) and live as
    // long as the process: references stay valid.
    DbMetrics& db(const std::string& dbname);
    std::vector<DbMetrics*> all() const;

    std::atomic<int64_t> main_tick_us{0};
    std::atomic<int64_t> started_at_us{wall_now_us()};
    std::function<uint64_t()> state_size;     // RocksDB approximate size, set by main
    std::function<uint64_t()> state_records;  // delivery records held in RocksDB, set by main
    std::function<uint64_t()> state_swept;    // records deleted by the retention sweep, set by main

    std::string render() const;  // Prometheus text format 0.0.4

    // Liveness: the main loop and every running worker ticked within `stale_after_s`.
    bool healthy(double stale_after_s, std::string* reason) const;
    // Readiness: every database streaming, lag below max_lag_s.
    bool ready(double max_lag_s, std::string* reason) const;

private:
    mutable std::mutex mu_;
    std::map<std::string, std::unique_ptr<DbMetrics>> dbs_;
};

Metrics& metrics();

// Quotes a Prometheus label value.
std::string prom_label(const std::string& v);

}  // namespace atx::applier
