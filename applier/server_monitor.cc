// The server monitor thread; see server_monitor.h.
#include "server_monitor.h"

#include <algorithm>

#include <spdlog/spdlog.h>

#include "logging.h"
#include "metrics.h"
#include "pg_conn.h"

namespace atx::applier {

ServerMonitor::ServerMonitor(std::string conninfo, std::vector<std::string> dbnames, uint32_t interval_ms)
    : conninfo_(std::move(conninfo)), dbnames_(std::move(dbnames)), interval_ms_(interval_ms)
{
}

ServerMonitor::~ServerMonitor() { stop(); }

void ServerMonitor::start()
{
    thread_ = std::thread([this] { run(); });
}

void ServerMonitor::stop()
{
    {
        std::lock_guard<std::mutex> l(mu_);
        stop_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable())
        thread_.join();
}

bool ServerMonitor::stop_within(std::chrono::milliseconds limit)
{
    std::unique_lock<std::mutex> l(mu_);
    stop_ = true;
    cv_.notify_all();
    if (!cv_.wait_for(l, limit, [this] { return finished_; }))
        return false;  // stuck in a query (unreachable host): the caller leaks this object
    l.unlock();
    if (thread_.joinable())
        thread_.join();
    return true;
}

void ServerMonitor::run()
{
    std::vector<std::unique_ptr<PgConn>> conns;
    for (size_t i = 0; i < dbnames_.size(); ++i)
        conns.push_back(std::make_unique<PgConn>());
    for (;;) {
        for (size_t i = 0; i < dbnames_.size(); ++i) {
            DbMetrics& m = metrics().db(dbnames_[i]);
            PgConn& c = *conns[i];
            try {
                if (c.connected() && PQstatus(c.get()) != CONNECTION_OK)
                    c.close();
                if (!c.connected())
                    c.connect(conninfo_, {{"dbname", dbnames_[i]},
                                          {"application_name", "atx-applier monitor"},
                                          {"connect_timeout", "5"},
                                          {"options", "-c statement_timeout=5000 -c lock_timeout=1000"}});
                PgResult r = c.exec("SELECT wal_status, active::int::text, "
                                    "CASE WHEN pg_is_in_recovery() THEN NULL ELSE "
                                    "(pg_current_wal_flush_lsn() - confirmed_flush_lsn)::bigint::text END "
                                    "FROM pg_replication_slots WHERE slot_name = 'pg_atx_' || "
                                    "(SELECT oid FROM pg_database WHERE datname = current_database())");
                if (PQntuples(r.get()) == 0) {
                    m.set_wal_status("missing");
                    m.slot_active = -1;
                    m.lag_bytes = -1;
                } else {
                    m.set_wal_status(field(r.get(), 0, 0).value_or("unknown"));
                    m.slot_active = std::stoi(field(r.get(), 0, 1).value_or("0"));
                    const auto lag = field(r.get(), 0, 2);
                    m.lag_bytes = lag ? std::max<int64_t>(0, std::stoll(*lag)) : -1;
                }
                try {
                    const auto n = c.scalar("SELECT count(*)::text FROM atx.dead_letter");
                    m.dead_letters = n ? std::stoll(*n) : -1;
                } catch (const PgError& e) {
                    if (e.connection_lost)
                        throw;
                    m.dead_letters = -1;  // extension missing or no SELECT privilege
                }
                m.server_up = true;
            } catch (const std::exception& e) {
                if (m.server_up)
                    spdlog::warn("db={} event=monitor_failed error={}", logq(dbnames_[i]), logq(e.what()));
                m.server_up = false;
                m.set_wal_status("unknown");
                m.slot_active = -1;
                m.lag_bytes = -1;
                c.close();
            }
        }
        std::unique_lock<std::mutex> l(mu_);
        if (cv_.wait_for(l, std::chrono::milliseconds(interval_ms_), [this] { return stop_; })) {
            finished_ = true;
            cv_.notify_all();
            return;
        }
    }
}

}  // namespace atx::applier
