// atx-applier: applies pg_atx autonomous statements exactly once from each database's slot.
//
// main() parses the configuration, opens the RocksDB state, starts one DatabaseWorker thread per
// database and turns signals into flags (the handlers only set atomics):
//   SIGTERM/SIGINT  workers finish the in-flight batch, confirm durable progress and return; after
//                   a 3 s grace the statement in flight is cancelled (and not committed); RocksDB is
//                   closed; exit 0 within 5 s
//   SIGHUP          reopen the log file, reload log-level from the config file
// Exit status: 0 clean, 1 configuration or startup error (or, with --once, a database that is
// not ready: extension missing, newer message format), 3 a slot was lost.
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <memory>
#include <thread>
#include <vector>

#include <spdlog/spdlog.h>

#include "config.h"
#include "database_worker.h"
#include "logging.h"
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

constexpr int kExitOk = 0;
constexpr int kExitConfig = 1;
constexpr int kExitSlotLost = 3;

}  // namespace

int main(int argc, char** argv)
{
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

    std::unique_ptr<StateStore> store;
    try {
        ::mkdir(cfg.state_dir.c_str(), 0700);
        store = StateStore::open(cfg.state_dir);
    } catch (const std::exception& e) {
        spdlog::error("event=startup_failed state_dir={} error={}", logq(cfg.state_dir), logq(e.what()));
        return kExitConfig;
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

    std::atomic<bool> stop{false};
    std::vector<std::unique_ptr<DatabaseWorker>> workers;
    for (const auto& db : cfg.dbnames) {
        workers.push_back(std::make_unique<DatabaseWorker>(cfg, db, *store, stop));
        workers.back()->start();
    }

    using Clock = std::chrono::steady_clock;
    Clock::time_point stop_at{};
    bool cancelled = false;
    for (;;) {
        bool all_done = true;
        for (const auto& w : workers)
            all_done = all_done && w->done();
        if (all_done)
            break;
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
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
    store.reset();  // flushes and closes RocksDB
    spdlog::info("event=exit status={}", code);
    shutdown_logging();
    remove_pid();
    return code;
}
