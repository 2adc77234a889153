// Metrics registry, Prometheus rendering and health rules; see metrics.h.
#include "metrics.h"

#include <algorithm>
#include <chrono>
#include <cinttypes>
#include <cstdio>

#include "replication_protocol.h"

namespace atx::applier {

const char* to_string(DbState s)
{
    switch (s) {
    case DbState::Starting: return "starting";
    case DbState::Connecting: return "connecting";
    case DbState::Streaming: return "streaming";
    case DbState::Standby: return "standby";
    case DbState::NotReady: return "not_ready";
    case DbState::SlotLost: return "slot_lost";
    case DbState::Stopped: return "stopped";
    }
    return "unknown";
}

int64_t wall_now_us()
{
    return std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::system_clock::now().time_since_epoch())
        .count();
}

std::string prom_label(const std::string& v)
{
    std::string out;
    for (char c : v) {
        if (c == '\\')
            out += "\\\\";
        else if (c == '"')
            out += "\\\"";
        else if (c == '\n')
            out += "\\n";
        else
            out += c;
    }
    return out;
}

namespace {

std::string fmt_double(double v)
{
    char b[64];
    std::snprintf(b, sizeof b, "%.6g", v);
    return b;
}

// Unix timestamps need all their digits (%.6g would print 1.79e+09).
std::string fmt_time(int64_t unix_us)
{
    char b[64];
    std::snprintf(b, sizeof b, "%.6f", static_cast<double>(unix_us) / 1e6);
    return b;
}

}  // namespace

void Histogram::observe(double seconds)
{
    size_t i = 0;
    while (i < kBounds.size() && seconds > kBounds[i])
        ++i;
    buckets_[i].fetch_add(1, std::memory_order_relaxed);
    count_.fetch_add(1, std::memory_order_relaxed);
    sum_ns_.fetch_add(static_cast<uint64_t>(seconds * 1e9), std::memory_order_relaxed);
}

void Histogram::render(std::string& out, const std::string& name, const std::string& labels) const
{
    uint64_t cum = 0;
    for (size_t i = 0; i < kBounds.size(); ++i) {
        cum += buckets_[i].load(std::memory_order_relaxed);
        out += name + "_bucket{" + labels + ",le=\"" + fmt_double(kBounds[i]) + "\"} " + std::to_string(cum) + "\n";
    }
    cum += buckets_[kBounds.size()].load(std::memory_order_relaxed);
    out += name + "_bucket{" + labels + ",le=\"+Inf\"} " + std::to_string(cum) + "\n";
    out += name + "_sum{" + labels + "} " +
           fmt_double(static_cast<double>(sum_ns_.load(std::memory_order_relaxed)) / 1e9) + "\n";
    out += name + "_count{" + labels + "} " + std::to_string(count_.load(std::memory_order_relaxed)) + "\n";
}

void DbMetrics::set_state(DbState s)
{
    state.store(static_cast<int>(s));
    if (s == DbState::Streaming || s == DbState::Standby)
        attempted = true;
}

void DbMetrics::set_error(std::string e)
{
    std::lock_guard<std::mutex> l(mu_);
    error_ = std::move(e);
}

std::string DbMetrics::error() const
{
    std::lock_guard<std::mutex> l(mu_);
    return error_;
}

void DbMetrics::set_wal_status(std::string s)
{
    std::lock_guard<std::mutex> l(mu_);
    wal_status_ = std::move(s);
}

std::string DbMetrics::wal_status() const
{
    std::lock_guard<std::mutex> l(mu_);
    return wal_status_;
}

void DbMetrics::message_queued(int64_t emit_pg_us)
{
    received.fetch_add(1, std::memory_order_relaxed);
    // 0: not decoded (a re-delivery skipped by position, an undecodable payload): count it from now.
    const int64_t emit = emit_pg_us != 0 ? emit_pg_us + kPgEpochOffsetUs : wall_now_us();
    int64_t expected = 0;
    pending_emit_us.compare_exchange_strong(expected, emit);
}

void DbMetrics::messages_applied(int64_t last_emit_pg_us, uint64_t last_lsn)
{
    last_applied_lsn.store(last_lsn);
    if (last_emit_pg_us != 0)
        last_applied_emit_us.store(last_emit_pg_us + kPgEpochOffsetUs);
    last_applied_at_us.store(wall_now_us());
}

double DbMetrics::lag_seconds(int64_t now_us) const
{
    const int64_t pending = pending_emit_us.load();
    if (pending != 0)
        return std::max<double>(0, static_cast<double>(now_us - pending) / 1e6);
    const int64_t emit = last_applied_emit_us.load(), at = last_applied_at_us.load();
    if (emit == 0 || at == 0)
        return 0;
    return std::max<double>(0, static_cast<double>(at - emit) / 1e6);
}

DbMetrics& Metrics::db(const std::string& dbname)
{
    std::lock_guard<std::mutex> l(mu_);
    auto& p = dbs_[dbname];
    if (!p)
        p = std::make_unique<DbMetrics>(dbname);
    return *p;
}

std::vector<DbMetrics*> Metrics::all() const
{
    std::lock_guard<std::mutex> l(mu_);
    std::vector<DbMetrics*> v;
    for (const auto& [_, p] : dbs_)
        v.push_back(p.get());
    return v;
}

Metrics& metrics()
{
    static Metrics m;
    return m;
}

std::string Metrics::render() const
{
    const auto dbs = all();
    const int64_t now = wall_now_us();
    std::string out;
    out.reserve(8192);
    auto header = [&](const char* name, const char* type, const char* help) {
        out += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " " + type + "\n";
    };
    auto lbl = [](const DbMetrics* d) { return "database=\"" + prom_label(d->dbname) + "\""; };
    auto per_db_counter = [&](const char* name, const char* help, const std::atomic<uint64_t> DbMetrics::*field) {
        header(name, "counter", help);
        for (const auto* d : dbs)
            out += std::string(name) + "{" + lbl(d) + "} " + std::to_string((d->*field).load()) + "\n";
    };
    per_db_counter("atx_messages_received_total", "Messages received from the slot.", &DbMetrics::received);
    per_db_counter("atx_messages_applied_total", "Messages executed and committed.", &DbMetrics::applied);
    per_db_counter("atx_messages_retried_total", "Failed attempts that were retried (transient SQLSTATE).",
                   &DbMetrics::retried);
    per_db_counter("atx_messages_dead_lettered_total", "Messages written to atx.dead_letter.",
                   &DbMetrics::dead_lettered);
    per_db_counter("atx_messages_duplicate_total",
                   "Messages not executed because their idempotency key or id was applied before.",
                   &DbMetrics::duplicate);
    per_db_counter("atx_messages_rejected_total",
                   "Dead letters of payloads that did not decode or authenticate (malformed or forged).",
                   &DbMetrics::rejected);
    per_db_counter("atx_reconnects_total", "Sessions that ended in an error and were restarted.",
                   &DbMetrics::reconnects);
    per_db_counter("atx_apply_transactions_total", "Apply transactions committed.", &DbMetrics::batches);
    per_db_counter("atx_apply_session_losses_total",
                   "Apply session connections lost while a batch ran (terminated, dropped, or the backend died).",
                   &DbMetrics::backend_losses);
    per_db_counter("atx_messages_overdue_total",
                   "Messages whose apply backend the applier ended because they overstayed their time limit "
                   "(dead-lettered 57014).",
                   &DbMetrics::overdue_terminated);
    per_db_counter("atx_apply_session_switches_total",
                   "Fresh apply sessions opened because a batch runs as another role than the session served.",
                   &DbMetrics::session_switches);
    per_db_counter("atx_apply_session_recycles_total",
                   "Apply sessions closed because their backend held more memory than --session-memory-limit-mb.",
                   &DbMetrics::session_recycles);
    per_db_counter("atx_messages_parked_total",
                   "Messages copied into the server (atx.park) because they waited behind a long-running statement of "
                   "their lane or role, so that the slot could move past them.",
                   &DbMetrics::parked_total);
    per_db_counter("atx_messages_behind_slot_total",
                   "Handled messages of which a new primary had no record while its slot stood past them.",
                   &DbMetrics::lost_found);
    per_db_counter("atx_messages_reapplied_total",
                   "Of those, messages copied from the WAL (parked) to be applied again.", &DbMetrics::repaired);
    per_db_counter("atx_messages_lost_total", "Of those, messages whose WAL was gone: lost. Alert on any.",
                   &DbMetrics::lost);
    auto per_db_gauge = [&](const char* name, const char* help, const std::atomic<uint64_t> DbMetrics::*field) {
        header(name, "gauge", help);
        for (const auto* d : dbs)
            out += std::string(name) + "{" + lbl(d) + "} " + std::to_string((d->*field).load()) + "\n";
    };
    per_db_gauge("atx_messages_queued", "Messages waiting in their lanes.", &DbMetrics::queued);
    per_db_gauge("atx_messages_in_flight", "Messages in batches that are running.", &DbMetrics::in_flight);
    per_db_gauge("atx_messages_suspect", "Messages that run alone after an apply session was lost.",
                 &DbMetrics::suspects);
    per_db_gauge("atx_messages_parked", "Parked messages not handled yet (they run from their copy in atx.applied).",
                 &DbMetrics::parked);

    header("atx_apply_duration_seconds", "histogram", "Duration of one apply transaction (BEGIN to COMMIT).");
    for (const auto* d : dbs)
        d->apply_seconds.render(out, "atx_apply_duration_seconds", lbl(d));

    header("atx_lag_seconds", "gauge",
           "Seconds behind: now minus the emit time of the oldest message waiting, or, when none "
           "waits, the emit-to-commit time of the last applied message.");
    for (const auto* d : dbs)
        out += "atx_lag_seconds{" + lbl(d) + "} " + fmt_double(d->lag_seconds(now)) + "\n";
    header("atx_lag_bytes", "gauge", "pg_current_wal_flush_lsn() minus the slot's confirmed_flush_lsn (-1: unknown).");
    for (const auto* d : dbs)
        out += "atx_lag_bytes{" + lbl(d) + "} " + std::to_string(d->lag_bytes.load()) + "\n";
    header("atx_last_applied_timestamp_seconds", "gauge", "Unix time of the last commit that applied messages.");
    for (const auto* d : dbs)
        out += "atx_last_applied_timestamp_seconds{" + lbl(d) + "} " + fmt_time(d->last_applied_at_us.load()) + "\n";
    header("atx_last_applied_lsn", "gauge", "LSN (as a number) of the last message handled by a commit.");
    for (const auto* d : dbs)
        out += "atx_last_applied_lsn{" + lbl(d) + "} " + std::to_string(d->last_applied_lsn.load()) + "\n";
    header("atx_confirmed_lsn", "gauge", "Flush position last confirmed to the slot.");
    for (const auto* d : dbs)
        out += "atx_confirmed_lsn{" + lbl(d) + "} " + std::to_string(d->confirmed_lsn.load()) + "\n";
    header("atx_dead_letters", "gauge", "Rows in atx.dead_letter (-1: unknown).");
    for (const auto* d : dbs)
        out += "atx_dead_letters{" + lbl(d) + "} " + std::to_string(d->dead_letters.load()) + "\n";

    header("atx_slot_wal_status", "gauge",
           "1 for the slot's current wal_status (missing: no slot, unknown: server not reachable).");
    static const char* kWal[] = {"reserved", "extended", "unreserved", "lost", "missing", "unknown"};
    for (const auto* d : dbs) {
        const std::string ws = d->wal_status();
        for (const char* w : kWal)
            out += "atx_slot_wal_status{" + lbl(d) + ",wal_status=\"" + w + "\"} " + (ws == w ? "1" : "0") + "\n";
    }
    header("atx_slot_active", "gauge", "1 when the slot is in use by a walsender (-1: unknown).");
    for (const auto* d : dbs)
        out += "atx_slot_active{" + lbl(d) + "} " + std::to_string(d->slot_active.load()) + "\n";
    header("atx_server_up", "gauge", "1 when the monitor's last query of the server succeeded.");
    for (const auto* d : dbs)
        out += "atx_server_up{" + lbl(d) + "} " + (d->server_up ? "1" : "0") + "\n";

    header("atx_database_state", "gauge", "1 for the worker's current state.");
    static const DbState kStates[] = {DbState::Starting, DbState::Connecting, DbState::Streaming, DbState::Standby,
                                      DbState::NotReady, DbState::SlotLost,   DbState::Stopped};
    for (const auto* d : dbs) {
        const DbState cur = d->get_state();
        for (DbState s : kStates)
            out += "atx_database_state{" + lbl(d) + ",state=\"" + to_string(s) + "\"} " + (cur == s ? "1" : "0") + "\n";
    }

    header("atx_state_store_bytes", "gauge", "Approximate size of the RocksDB state (SST files + memtables).");
    out += "atx_state_store_bytes " + std::to_string(state_size ? state_size() : 0) + "\n";
    header("atx_state_store_records", "gauge", "Delivery records in the RocksDB state (all databases).");
    out += "atx_state_store_records " + std::to_string(state_records ? state_records() : 0) + "\n";
    header("atx_state_store_swept_total", "counter", "Delivery records deleted by the retention sweep.");
    out += "atx_state_store_swept_total " + std::to_string(state_swept ? state_swept() : 0) + "\n";
    header("atx_start_time_seconds", "gauge", "Unix time the process started.");
    out += "atx_start_time_seconds " + fmt_time(started_at_us.load()) + "\n";
    return out;
}

bool Metrics::healthy(double stale_after_s, std::string* reason) const
{
    const int64_t now = wall_now_us();
    const int64_t limit = static_cast<int64_t>(stale_after_s * 1e6);
    if (now - main_tick_us.load() > limit) {
        *reason = "main loop has not ticked for " + std::to_string((now - main_tick_us.load()) / 1000000) + " s";
        return false;
    }
    for (const auto* d : all()) {
        const DbState s = d->get_state();
        if (s == DbState::Stopped || s == DbState::SlotLost)
            continue;
        const int64_t t = d->last_tick_us.load();
        if (t != 0 && now - t > limit) {
            *reason =
                "worker of database " + d->dbname + " has not ticked for " + std::to_string((now - t) / 1000000) + " s";
            return false;
        }
    }
    *reason = "alive";
    return true;
}

bool Metrics::ready(double max_lag_s, std::string* reason) const
{
    const int64_t now = wall_now_us();
    std::string why;
    for (const auto* d : all()) {
        const DbState s = d->get_state();
        if (s != DbState::Streaming) {
            why += "database " + d->dbname + " is " + to_string(s);
            const std::string e = d->error();
            if (!e.empty())
                why += " (" + e + ")";
            why += "; ";
            continue;
        }
        const double lag = d->lag_seconds(now);
        if (lag > max_lag_s)
            why += "database " + d->dbname + " lags " + fmt_double(lag) + " s (max " + fmt_double(max_lag_s) + "); ";
    }
    if (why.empty()) {
        *reason = "ready";
        return true;
    }
    why.resize(why.size() - 2);
    *reason = why;
    return false;
}

}  // namespace atx::applier
