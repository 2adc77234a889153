// atx-applier: applies pg_atx autonomous statements exactly once from each database's slot.
//
// main() parses the configuration, opens the RocksDB state, starts one DatabaseWorker thread per
// database and turns signals into flags (the handlers only set atomics):
//   SIGTERM/SIGINT  workers finish the in-flight batch, confirm durable progress and return; after
//                   a 3 s grace the statement in flight is cancelled (and not committed); RocksDB is
//                   closed; exit 0 within 5 s
//   SIGHUP          reopen the log file, reload log-level from the config file
// It also serves /metrics, /healthz and /readyz (--http-listen), runs the ServerMonitor, and talks
// to systemd (READY/WATCHDOG/STOPPING via sd_notify; no-ops without NOTIFY_SOCKET).
// A first argument naming an operator command (status, show, dead-letters, retry, discard, check)
// runs that command instead of the daemon (cli.h).
// Exit status: 0 clean, 1 configuration or startup error (or, with --once, a database that is
// not ready: extension missing, newer message format), 3 a slot was lost.
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <thread>
#include <vector>

#include <spdlog/spdlog.h>

#include "cli.h"
#include "config.h"
#include "database_worker.h"
#include "http_server.h"
#include "logging.h"
#include "metrics.h"
#include "sd_notify.h"
#include "server_monitor.h"
#include "state_store.h"

using namespace atx::applier;

namespace {

volatile sig_atomic_t g_term = 0;
volatile sig_atomic_t g_hup = 0;

extern "C" void on_term(int) { g_term = 1; }
extern "C" void on_hup(int) { g_hup = 1; }

void install_signals()
{
    struct sigaction sa {};
    sa.sa_handler = on_term;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, nullptr);
    sigaction(SIGINT, &sa, nullptr);
    sa.sa_handler = on_hup;
    sigaction(SIGHUP, &sa, nullptr);
    signal(SIGPIPE, SIG_IGN);
}

// RocksDB's text for the errors a state directory recovers from by itself.
bool state_error_is_transient(const std::string& e)
{
    for (const char* what : {"No space left on device", "Disk quota exceeded", "Input/output error"})
        if (e.find(what) != std::string::npos)
            return true;
    return false;
}

constexpr int kExitOk = 0;
constexpr int kExitConfig = 1;
constexpr int kExitSlotLost = 3;
constexpr double kStaleAfterSeconds = 60;  // a worker loop silent this long is unhealthy
// Binding the default metrics address again while another process holds it.
constexpr std::chrono::seconds kHttpRetryFirst{1};
constexpr std::chrono::seconds kHttpRetryMax{30};

// Per database state for systemd's STATUS= line.
std::string status_line()
{
    std::string s;
    for (const auto* d : metrics().all())
        s += (s.empty() ? "" : ", ") + d->dbname + ": " + to_string(d->get_state());
    return s;
}

}  // namespace

int main(int argc, char** argv)
{
    if (argc > 1 && is_cli_command(argv[1]))
        return run_cli(argc - 1, argv + 1);

    ParseOutcome parsed;
    try {
        parsed = parse_config(argc, argv);
    } catch (const ConfigError& e) {
        std::fprintf(stderr, "atx-applier: %s\nTry 'atx-applier --help'.\n", e.what());
        return kExitConfig;
    }
    if (parsed.action != ParseOutcome::Action::Run) {
        std::fputs(parsed.text.c_str(), stdout);
        return kExitOk;
    }
    const Config cfg = parsed.config;
    try {
        init_logging(cfg.log_file, cfg.log_level);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "atx-applier: %s\n", e.what());
        return kExitConfig;
    }
    install_signals();

    // A state directory that cannot be opened for want of room (or of a working disk) may have it
    // again in a moment: wait for it here, as a running applier waits to write again, instead of
    // exiting with the status that tells systemd not to restart (RestartPreventExitStatus=1).
    // Anything else (permissions, another instance's lock, not a directory) is the operator's.
    std::unique_ptr<StateStore> store;
    for (auto pause = std::chrono::seconds(1);;) {
        std::string error;
        try {
            ::mkdir(cfg.state_dir.c_str(), 0700);
            store = StateStore::open(cfg.state_dir);
            break;
        } catch (const std::exception& e) {
            error = e.what();
        }
        if (!state_error_is_transient(error)) {
            spdlog::error("event=startup_failed state_dir={} error={}", logq(cfg.state_dir), logq(error));
            return kExitConfig;
        }
        spdlog::error("event=state_dir_unavailable state_dir={} error={} action=\"trying again in {} s\"",
                      logq(cfg.state_dir), logq(error), pause.count());
        for (auto until = std::chrono::steady_clock::now() + pause; std::chrono::steady_clock::now() < until;) {
            if (g_term)
                return kExitOk;
            std::this_thread::sleep_for(std::chrono::milliseconds(100));
        }
        pause = std::min(pause * 2, std::chrono::seconds(30));
    }
    // After RocksDB: its LOCK file keeps a second instance from getting here and taking the pid file.
    if (!cfg.pid_file.empty()) {
        std::ofstream pf(cfg.pid_file, std::ios::trunc);
        if (!pf || !(pf << ::getpid() << "\n")) {
            spdlog::error("event=startup_failed error={}", logq("cannot write pid file " + cfg.pid_file));
            store.reset();
            return kExitConfig;
        }
    }
    auto remove_pid = [&] {
        if (!cfg.pid_file.empty())
            ::unlink(cfg.pid_file.c_str());
    };

    spdlog::info("event=started version={} pid={} databases={} state_dir={} batch_size={} "
                 "synchronous_commit={} once={}",
                 kApplierVersion, ::getpid(), cfg.dbnames.size(), logq(cfg.state_dir), cfg.batch_size,
                 cfg.synchronous_commit, cfg.once);
#ifdef ATX_FAULT_INJECTION
    // atx-applier-faults (tests only): say so, and which fault point is armed.
    const char* fault = std::getenv("ATX_FAULT");
    spdlog::warn("event=fault_points_compiled armed={} warning=\"test-only binary: ATX_FAULT makes it SIGKILL "
                 "itself; run the installed atx-applier in production\"",
                 logq(fault && *fault ? fault : "none"));
#endif

    for (const auto& db : cfg.dbnames)
        metrics().db(db);  // fixed set of entries before any thread reads them
    metrics().main_tick_us = wall_now_us();
    StateStore* store_ptr = store.get();
    metrics().state_size = [store_ptr] { return store_ptr->approximate_size(); };
    metrics().state_records = [store_ptr] { return store_ptr->record_count(); };
    metrics().state_swept = [store_ptr] { return store_ptr->swept_count(); };
    RetentionPolicy retention;
    retention.max_age_days = cfg.state_retention_days;
    retention.max_records = cfg.state_retention_records;
    store->start_retention(retention, std::chrono::milliseconds(cfg.state_retention_interval_ms));
    spdlog::info("event=state_retention records={} max_age_days={} max_records_per_database={} interval_ms={}{}",
                 store->record_count(), retention.max_age_days, retention.max_records, cfg.state_retention_interval_ms,
                 retention.enabled() ? "" : " warning=\"off: the history grows forever\"");
    // The listener. An address given explicitly that cannot be bound is a startup error; the
    // default one may be held for a while (another applier on this host, a restart of this one
    // while the old process still exits): it is tried again with backoff until it is free, and
    // the daemon works meanwhile.
    std::unique_ptr<HttpServer> http;
    std::string http_error;
    auto try_listen = [&]() -> bool {
        try {
            auto h = std::make_unique<HttpServer>(parse_listen(cfg.http_listen),
                                                  static_cast<double>(cfg.ready_max_lag_seconds), kStaleAfterSeconds);
            h->start();
            http = std::move(h);
            spdlog::info("event=http_listening address={} port={} url={}", logq(http->address()), http->port(),
                         logq("http://" + http->address() + "/metrics"));
            return true;
        } catch (const std::exception& e) {
            http_error = e.what();
            return false;
        }
    };
    if (cfg.http_listen != "off" && !try_listen()) {
        if (cfg.http_listen_explicit) {
            spdlog::error("event=startup_failed error={}", logq(http_error));
            store.reset();
            remove_pid();
            return kExitConfig;
        }
        spdlog::warn("event=http_bind_waiting error={} action=\"serving no /metrics until the default address is "
                     "free, trying again every {} s at most; set http-listen to a free address or 'off'\"",
                     logq(http_error), kHttpRetryMax.count());
    }
    auto monitor = std::make_unique<ServerMonitor>(cfg.conninfo, cfg.dbnames, cfg.monitor_interval_ms);
    monitor->start();

    std::atomic<bool> stop{false};
    std::vector<std::unique_ptr<DatabaseWorker>> workers;
    for (const auto& db : cfg.dbnames) {
        workers.push_back(std::make_unique<DatabaseWorker>(cfg, db, *store, stop));
        workers.back()->start();
    }

    using Clock = std::chrono::steady_clock;
    Clock::time_point stop_at{};
    bool cancelled = false;
    bool notified_ready = false;
    const auto wd_interval = sd::watchdog_interval();
    Clock::time_point next_watchdog{}, next_status{};
    std::string last_status;
    auto http_retry = kHttpRetryFirst;
    Clock::time_point next_http_try = Clock::now() + http_retry;
    for (;;) {
        bool all_done = true;
        for (const auto& w : workers)
            all_done = all_done && w->done();
        if (all_done)
            break;
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
        metrics().main_tick_us = wall_now_us();
        const auto now = Clock::now();
        if (!notified_ready && !stop) {
            bool attempted = true;
            for (const auto* d : metrics().all())
                attempted = attempted && d->attempted;
            if (attempted) {
                last_status = status_line();
                sd::ready(last_status);
                notified_ready = true;
                spdlog::info("event=ready_notified status={}", logq(last_status));
            }
        }
        if (notified_ready && now >= next_status) {
            next_status = now + std::chrono::seconds(1);
            if (std::string st = status_line(); st != last_status) {
                sd::status(st);
                last_status = st;
            }
        }
        if (wd_interval.count() > 0 && now >= next_watchdog) {
            std::string why;
            if (metrics().healthy(kStaleAfterSeconds, &why)) {
                sd::watchdog();
                next_watchdog = now + wd_interval / 2;
            } else {
                spdlog::warn("event=watchdog_withheld reason={}", logq(why));
                next_watchdog = now + std::chrono::seconds(5);
            }
        }
        if (!http && cfg.http_listen != "off" && !stop && now >= next_http_try) {
            if (!try_listen()) {
                http_retry = std::min(http_retry * 2, kHttpRetryMax);
                next_http_try = now + http_retry;
            }
        }
        if (g_hup) {
            g_hup = 0;
            reopen_log();
            try {
                if (auto lvl = reload_log_level(cfg)) {
                    set_log_level(*lvl);
                    spdlog::info("event=reloaded log_level={}", spdlog::level::to_string_view(*lvl));
                } else {
                    spdlog::info("event=log_reopened");
                }
            } catch (const std::exception& e) {
                spdlog::error("event=reload_failed error={}", logq(e.what()));
            }
        }
        if (g_term && !stop) {
            spdlog::info("event=shutdown_requested action=\"finishing in-flight batches\"");
            sd::stopping();
            stop = true;
            stop_at = Clock::now();
        }
        if (stop && !cancelled && Clock::now() - stop_at > std::chrono::seconds(3)) {
            spdlog::warn("event=shutdown_cancel action=\"cancelling statements still running; they "
                         "are rolled back and applied after restart\"");
            for (const auto& w : workers)
                if (!w->done())
                    w->cancel_in_flight();
            cancelled = true;
        }
        if (stop && Clock::now() - stop_at > std::chrono::milliseconds(4700)) {
            spdlog::error("event=shutdown_forced action=\"exiting without waiting for workers; "
                          "nothing unconfirmed is lost\"");
            spdlog::default_logger()->flush();
            remove_pid();
            std::_Exit(kExitOk);
        }
    }

    int code = kExitOk;
    for (auto& w : workers) {
        w->join();
        if (w->result() == WorkerResult::SlotLost)
            code = kExitSlotLost;
        else if (w->result() == WorkerResult::Failed && code == kExitOk)
            code = kExitConfig;
    }
    workers.clear();
    if (!g_term)
        sd::stopping();
    if (!monitor->stop_within(std::chrono::seconds(2)))
        (void)monitor.release();  // stuck on an unreachable server; the process exits anyway
    if (http)
        http->stop();
    metrics().state_size = nullptr;
    metrics().state_records = nullptr;
    metrics().state_swept = nullptr;
    store.reset();  // flushes and closes RocksDB
    spdlog::info("event=exit status={}", code);
    shutdown_logging();
    remove_pid();
    return code;
}
