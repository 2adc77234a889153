// The watchdog; see deadline_watch.h.
#include "deadline_watch.h"

#include <spdlog/spdlog.h>

#include "logging.h"
#include "replication_protocol.h"

namespace atx::applier {

namespace {
constexpr std::chrono::milliseconds kWatchEvery{250};
}

DeadlineWatch::DeadlineWatch(std::string conninfo, std::string dbname, std::string log, uint32_t limit_ms,
                             uint32_t grace_ms, Workers workers)
    : conninfo_(std::move(conninfo)), dbname_(std::move(dbname)), log_(std::move(log)), limit_ms_(limit_ms),
      grace_ms_(grace_ms), workers_(std::move(workers))
{
}

// Connected before any message runs, as the control connection is: a connection opened only
// when a message overstays could find max_connections taken (by the overstaying role, even).
void DeadlineWatch::start()
{
    connect();
    stop_ = false;
    thread_ = std::thread([this] { run(); });
}

void DeadlineWatch::connect()
{
    conn_.connect(conninfo_,
                  {{"dbname", dbname_}, {"application_name", "atx-applier watchdog"}, {"connect_timeout", "2"}});
}

void DeadlineWatch::stop()
{
    {
        std::lock_guard<std::mutex> lock(mu_);
        stop_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable())
        thread_.join();
    conn_.close();
}

void DeadlineWatch::run()
{
    std::unique_lock<std::mutex> lock(mu_);
    while (!cv_.wait_for(lock, kWatchEvery, [this] { return stop_; })) {
        lock.unlock();
        try {
            round();
        } catch (const PgError& e) {
            // A new connection next round; said once a minute while it lasts.
            conn_.close();
            const auto now = std::chrono::steady_clock::now();
            if (now - last_error_ > std::chrono::minutes(1)) {
                spdlog::error("{} event=watchdog_failed sqlstate={} error={}", log_,
                              e.sqlstate.empty() ? "-" : e.sqlstate, logq(e.what()));
                last_error_ = now;
            }
        }
        lock.lock();
    }
}

// Only batches that have run longer than the limit are looked at, so the registry is read only
// when something may be overdue.
void DeadlineWatch::round()
{
    const auto now = std::chrono::steady_clock::now();
    const std::vector<std::shared_ptr<ApplyWorker>> all = workers_();
    bool suspicious = false;
    for (const auto& w : all) {
        const WorkerActivity a = w->activity();
        if (a.since != std::chrono::steady_clock::time_point{} && now - a.since >= std::chrono::milliseconds(limit_ms_))
            suspicious = true;
    }
    if (!suspicious)
        return;
    if (!conn_.connected())
        connect();  // lost since: again, as soon as it is needed
    PgResult r =
        conn_.exec("SELECT pid::text, lsn::text FROM atx.apply_activity() WHERE state OPERATOR(pg_catalog.=) 'running' "
                   "AND deadline IS NOT NULL AND now OPERATOR(pg_catalog.>=) (deadline OPERATOR(pg_catalog.+) "
                   "$1::pg_catalog.interval)",
                   {std::to_string(grace_ms_) + " milliseconds"});
    for (int i = 0; i < PQntuples(r.get()); ++i) {
        const int pid = std::stoi(field(r.get(), i, 0).value_or("0"));
        const std::string at = field(r.get(), i, 1).value_or("");
        ApplyWorker* owner = nullptr;
        for (const auto& w : all)
            if (w->activity().backend_pid == pid)
                owner = w.get();
        if (owner == nullptr)
            continue;  // not this applier's (another database's worker, an operator's session)
        owner->ending_for_overdue(parse_lsn(at).value_or(0));
        const bool ended =
            conn_
                .scalar("SELECT atx.terminate_overdue($1::pg_catalog.int4, $2::pg_catalog.pg_lsn)::pg_catalog.text",
                        {std::to_string(pid), at})
                .value_or("false") == "true";
        if (!ended)
            owner->ending_for_overdue(0);  // it moved on meanwhile
        else
            spdlog::warn("{} event=overdue_terminated pid={} lsn={} grace_ms={} action=\"its statement ignored the "
                         "cancel at its time limit: its apply session is ended\"",
                         log_, pid, at, grace_ms_);
    }
}

}  // namespace atx::applier
