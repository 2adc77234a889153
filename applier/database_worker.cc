// Per-database worker; see database_worker.h, and progress.h for the confirmation rule.
#include "database_worker.h"
#include "version.h"

#include <algorithm>
#include <map>

#include <spdlog/spdlog.h>

#include "fault.h"
#include "frame.h"
#include "logging.h"
#include "message.h"

namespace atx::applier {

namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr milliseconds kRead{50};
constexpr milliseconds kSlotCheckEvery{30000};
constexpr milliseconds kDurabilityPoll{20};
constexpr milliseconds kFlushNudgeAfter{1000};
constexpr milliseconds kReconnectMin{250};
constexpr milliseconds kReconnectMax{2000};  // a promotion is followed within about a second
constexpr milliseconds kNotReadyWait{5000};
constexpr milliseconds kStandbyPoll{1000};
constexpr milliseconds kStopGrace{3000};
constexpr milliseconds kNestedAfter{20};
constexpr milliseconds kParkEvery{1000};
// The database thread's own statements (parking, pruning) give up a lock wait after this.
constexpr const char* kBookkeepingLockTimeoutSql = "SELECT pg_catalog.set_config('lock_timeout', '500', false)";
constexpr size_t kParkMax = 1000;  // messages per atx.park call
// While the stream has sent nothing after a timeline change, the WAL written meanwhile is read
// this often for messages its decoding skipped (find_unsent).
constexpr std::chrono::seconds kUnsentScanEvery{1};
constexpr size_t kFailoverCheckLimit = 200000;

// Shutdown requested: leave without committing or confirming anything new.
struct Interrupted {};

// The slot is invalidated: stop this database for good.
class SlotLost : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// Something to wait for (extension missing or too old, a newer message format, ...).
class NotReady : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

std::string lsn(Lsn l) { return format_lsn(l); }

}  // namespace

DatabaseWorker::DatabaseWorker(const Config& cfg, std::string dbname, StateStore& store, const std::atomic<bool>& stop)
    : cfg_(cfg), dbname_(std::move(dbname)), log_("db=" + logq(dbname_)), store_(store), stop_(stop),
      m_(metrics().db(dbname_)),
      dispatcher_(Dispatcher::Options{cfg.batch_size, cfg.max_sessions_per_role, cfg.max_nested_per_role,
                                      cfg.max_nonatomic, cfg.max_nonatomic_per_role, cfg.max_backend_losses,
                                      milliseconds(cfg.park_after_ms), milliseconds(cfg.batch_delay_ms)})
{
    policy_.max_attempts = cfg.max_attempts;
    policy_.base = milliseconds(cfg.retry_base_ms);
    policy_.cap = milliseconds(cfg.retry_cap_ms);
}

DatabaseWorker::~DatabaseWorker() { join(); }

void DatabaseWorker::start()
{
    thread_ = std::thread([this] { run(); });
}

void DatabaseWorker::join()
{
    if (thread_.joinable())
        thread_.join();
}

void DatabaseWorker::cancel_in_flight() { cancelled_ = true; }

static void sleep_unless(const std::atomic<bool>& stop, milliseconds d)
{
    const auto until = Clock::now() + d;
    while (!stop && Clock::now() < until)
        std::this_thread::sleep_for(std::min<Clock::duration>(milliseconds(50), until - Clock::now()));
}

void DatabaseWorker::run()
{
    milliseconds backoff = kReconnectMin;
    WorkerResult res = WorkerResult::Stopped;
    while (!stop_) {
        milliseconds wait = backoff;
        try {
            res = session();
            if (res != WorkerResult::Running)
                break;
        } catch (const SlotLost& e) {
            m_.set_state(DbState::SlotLost);
            m_.set_error(e.what());
            spdlog::error("{} event=slot_lost slot={} error={} action=\"stopping this database; the slot is not "
                          "re-created automatically: drop it and restart to resume (messages it held are lost)\"",
                          log_, slot_, logq(e.what()));
            res = WorkerResult::SlotLost;
            break;
        } catch (const NotReady& e) {
            m_.set_state(DbState::NotReady);
            m_.set_error(e.what());
            if (cfg_.once) {
                spdlog::error("{} event=not_ready error={} action=\"giving up (--once)\"", log_, logq(e.what()));
                res = WorkerResult::Failed;
                break;
            }
            spdlog::error("{} event=not_ready error={} retry_in_ms={}", log_, logq(e.what()), kNotReadyWait.count());
            wait = kNotReadyWait;
        } catch (const PgError& e) {
            m_.set_error(e.what());
            if (e.sqlstate == "55006") {
                // The slot is streamed by another applier: this one is a standby; poll every second.
                if (m_.get_state() != DbState::Standby)
                    spdlog::info("{} event=standby error={} action=\"another applier streams the slot; retrying "
                                 "every {} ms\"",
                                 log_, logq(e.what()), kStandbyPoll.count());
                m_.set_state(DbState::Standby);
                stop_workers(true);
                stream_.close();
                control_.close();
                prune_.close();
                sleep_unless(stop_, kStandbyPoll);
                backoff = kReconnectMin;
                continue;
            }
            spdlog::error("{} event={} sqlstate={} error={} retry_in_ms={}", log_,
                          e.connection_lost ? "connection_error" : "session_error",
                          e.sqlstate.empty() ? "-" : e.sqlstate, logq(e.what()), wait.count());
        } catch (const Interrupted&) {
            break;
        } catch (const std::exception& e) {
            m_.set_error(e.what());
            spdlog::error("{} event=session_error error={} retry_in_ms={}", log_, logq(e.what()), wait.count());
        }
        stop_workers(true);
        stream_.close();
        control_.close();
        prune_.close();
        if (stop_)
            break;
        m_.attempted = true;
        ++m_.reconnects;
        if (m_.get_state() != DbState::NotReady)
            m_.set_state(DbState::Connecting);
        if (streamed_ && wait == backoff)
            wait = backoff = kReconnectMin;
        streamed_ = false;
        sleep_unless(stop_, wait);
        backoff = std::min(backoff * 2, kReconnectMax);
    }
    stop_workers(cancelled_);
    stream_.close();
    control_.close();
    prune_.close();
    if (res == WorkerResult::Running)
        res = WorkerResult::Stopped;
    result_ = res;
    m_.set_state(res == WorkerResult::SlotLost ? DbState::SlotLost : DbState::Stopped);
    spdlog::info("{} event=worker_exit result={}", log_,
                 res == WorkerResult::Finished   ? "finished"
                 : res == WorkerResult::SlotLost ? "slot_lost"
                 : res == WorkerResult::Failed   ? "failed"
                                                 : "stopped");
    done_ = true;
}

void DatabaseWorker::open_control()
{
    control_.connect(cfg_.conninfo, {{"dbname", dbname_}, {"application_name", "atx-applier control"}});
    if (control_.scalar("SELECT pg_catalog.pg_is_in_recovery()::text").value_or("") == "true")
        throw PgError("the server is a standby (in recovery): waiting for a primary", "25006", true);
    // Apply connections that went without a word before the stream starts again: did the
    // server restart meanwhile (a backend died)?
    dispatcher_.settle(control_.scalar(std::string("SELECT ") + kServerGenerationSql).value_or(""));
    const auto oid = control_.scalar("SELECT oid::text FROM pg_catalog.pg_database "
                                     "WHERE datname OPERATOR(pg_catalog.=) pg_catalog.current_database()");
    if (!oid)
        throw PgError("current database not found in pg_database", "", false);
    oid_ = static_cast<uint32_t>(std::stoul(*oid));
    scope_ = "db" + *oid;
    const auto version = control_.scalar("SELECT extversion FROM pg_catalog.pg_extension "
                                         "WHERE extname OPERATOR(pg_catalog.=) 'pg_atx'");
    if (!version)
        throw NotReady("extension pg_atx is not installed in database " + dbname_ + " (CREATE EXTENSION pg_atx)");
    if (!extension_compatible(*version))
        throw NotReady(extension_incompatible_message(*version, dbname_) + ": " +
                       extension_incompatible_hint(*version));
    // Each message's time limit is enforced from outside its statement through the server's
    // apply registry, which only a preloaded pg_atx has.
    try {
        control_.exec("SELECT count(*) FROM atx.apply_activity()");
    } catch (const PgError& e) {
        if (e.connection_lost || e.sqlstate != "55000")
            throw;
        throw NotReady("pg_atx is not in shared_preload_libraries of this server: atx-applier needs it to bound each "
                       "message's time (add it and restart the server)");
    }
    slot_ = control_.scalar("SELECT atx.slot_name()::text").value_or("");

    // The durability rule (docs/applier.md).
    sync_commits_ = cfg_.durability == "sync";
    standby_flush_ = cfg_.durability == "standby-flush";
    if (cfg_.durability == "auto")
        follow_synchronous_standbys(false);
    spdlog::info("{} event=connected oid={} slot={} extension={} durability={}{}", log_, oid_, slot_, *version,
                 sync_commits_    ? "sync"
                 : standby_flush_ ? "standby-flush"
                                  : "local",
                 cfg_.durability == "auto" ? " (auto)" : "");
    check_slot(true);
}

// --durability auto: synchronous apply commits while synchronous_standby_names is set. Patroni
// changes it at run time (it takes a restarting synchronous standby out and puts it back), so
// it is read again every status interval; the apply sessions switch before their next commit.
void DatabaseWorker::follow_synchronous_standbys(bool log_change)
{
    next_rule_check_ = Clock::now() + milliseconds(cfg_.status_interval_ms);
    const auto ssn = control_.scalar("SELECT pg_catalog.current_setting('synchronous_standby_names')");
    if (!ssn)
        return;
    const bool sync = !ssn->empty();
    if (sync == sync_commits_)
        return;
    sync_commits_ = sync;
    if (ctx_)
        ctx_->sync_commits = sync;
    if (log_change)
        spdlog::info("{} event=durability_changed durability={} (auto) synchronous_standby_names={}", log_,
                     sync ? "sync" : "local", logq(*ssn));
}

void DatabaseWorker::check_slot(bool initial)
{
    static const char* kSlotSql =
        "SELECT wal_status, confirmed_flush_lsn::text, plugin::text FROM pg_catalog.pg_replication_slots "
        "WHERE slot_name OPERATOR(pg_catalog.=) $1";
    PgResult r = control_.exec(kSlotSql, {slot_});
    next_slot_check_ = Clock::now() + kSlotCheckEvery;
    if (PQntuples(r.get()) == 0) {
        if (!initial)
            throw PgError("slot " + slot_ + " disappeared while streaming", "", false);
        const auto horizon = control_.scalar("SELECT lsn::text FROM atx.apply_horizon");
        if (horizon && parse_lsn(*horizon).value_or(0) != 0)
            spdlog::warn("{} event=slot_recreated slot={} horizon={} warning=\"the slot was missing although this "
                         "database was applied before; messages emitted while no slot existed were never "
                         "delivered\"",
                         log_, slot_, *horizon);
        control_.exec("SELECT atx.ensure_slot()");
        spdlog::info("{} event=slot_created slot={} plugin=pg_atx", log_, slot_);
        r = control_.exec(kSlotSql, {slot_});
        if (PQntuples(r.get()) == 0)
            throw PgError("slot " + slot_ + " vanished right after its creation", "", false);
    }
    const std::string wal_status = field(r.get(), 0, 0).value_or("");
    const std::string plugin = field(r.get(), 0, 2).value_or("");
    m_.set_wal_status(wal_status);
    if (plugin != "pg_atx")
        throw NotReady("slot " + slot_ + " uses output plugin '" + plugin + "', not pg_atx; drop it or rename it");
    if (wal_status == "lost")
        throw SlotLost("slot " + slot_ +
                       " has wal_status 'lost' (invalidated by max_slot_wal_keep_size); "
                       "messages it held are gone");
    if (wal_status == "unreserved")
        spdlog::warn("{} event=slot_at_risk slot={} wal_status=unreserved warning=\"the slot is about to be "
                     "invalidated (max_slot_wal_keep_size); undelivered messages will be lost if it is\"",
                     log_, slot_);
    if (initial)
        slot_confirmed_ = parse_lsn(field(r.get(), 0, 1).value_or("")).value_or(0);
}

// After a failover the new primary's slot may stand past messages whose apply commits never
// reached it (asynchronous replication, or a slot moved ahead by hand): the slot will not send
// them again and the server has no record of them. Find them in the local history, apply them
// again while their WAL is there, and say so loudly either way.
void DatabaseWorker::check_failover()
{
    const ReplicationStream::Identity id = stream_.identify();
    const auto known_system = store_.get_meta(scope_, "system_id");
    const auto known_tli = store_.get_meta(scope_, "timeline");
    if (known_system && *known_system != id.system_id)
        spdlog::warn("{} event=different_cluster system_id={} was={} warning=\"this state directory was used with "
                     "another cluster (restored or replaced)\"",
                     log_, id.system_id, *known_system);
    // A new timeline: this server's slot may be a copy whose decoding skips messages for a while
    // (find_unsent). A state directory that never saw this cluster cannot tell: after any
    // failover in the cluster's past, it checks once too.
    if ((known_tli && *known_tli != std::to_string(id.timeline)) || (!known_tli && id.timeline > 1))
        try {
            store_.put_meta(scope_, "unsent_check", "pending");
        } catch (const StateError& e) {
            spdlog::error("{} event=state_write_failed error={}", log_, logq(e.what()));
        }
    if (known_tli && *known_tli != std::to_string(id.timeline))
        spdlog::warn("{} event=timeline_changed timeline={} was={} action=\"checking that every message the slot "
                     "confirmed was applied on this server\"",
                     log_, id.timeline, *known_tli);
    try {
        store_.put_meta(scope_, "system_id", id.system_id);
        store_.put_meta(scope_, "timeline", std::to_string(id.timeline));
    } catch (const StateError& e) {
        spdlog::error("{} event=state_write_failed error={}", log_, logq(e.what()));
    }

    const Lsn horizon =
        parse_lsn(control_.scalar("SELECT lsn::text FROM atx.apply_horizon").value_or("0/0")).value_or(0);
    std::vector<DeliveryRecord> handled;
    try {
        handled = store_.list(scope_, kFailoverCheckLimit, horizon, slot_confirmed_);
    } catch (const StateError& e) {
        spdlog::error("{} event=failover_check_skipped error={}", log_, logq(e.what()));
        return;
    }
    std::vector<std::optional<std::string>> lsns;
    for (const auto& r : handled)
        if (r.status != DeliveryStatus::Retrying)
            lsns.push_back(format_lsn(r.source_lsn));
    if (lsns.empty())
        return;
    PgResult missing = control_.exec("SELECT l::text FROM atx.unapplied($1::pg_catalog.pg_lsn[]) l ORDER BY l",
                                     {pg_array_literal(lsns)});
    const int n = PQntuples(missing.get());
    if (n == 0)
        return;
    std::vector<std::optional<std::string>> gone;
    for (int i = 0; i < n; ++i)
        gone.push_back(field(missing.get(), i, 0));
    m_.lost_found += static_cast<uint64_t>(n);
    spdlog::critical("{} event=messages_behind_slot count={} first={} last={} slot_confirmed={} action=\"copying "
                     "them from the WAL to run again (the slot will not send them)\"",
                     log_, n, gone.front().value_or("-"), gone.back().value_or("-"), lsn(slot_confirmed_));
    // Parked, they run in the apply sessions like any message, with retries, before what the
    // stream sends (load_parked): not here, where a message that waits for a nested atx_exec
    // would wait for sessions that do not exist yet, and a transient failure would lose it.
    std::map<std::string, size_t> outcome;
    try {
        for (size_t i = 0; i < gone.size(); i += kParkMax) {
            const std::vector<std::optional<std::string>> part(
                gone.begin() + static_cast<long>(i),
                gone.begin() + static_cast<long>(std::min(gone.size(), i + kParkMax)));
            PgResult r =
                control_.exec("SELECT status FROM atx.park($1::pg_catalog.pg_lsn[])", {pg_array_literal(part)});
            for (int j = 0; j < PQntuples(r.get()); ++j)
                ++outcome[field(r.get(), j, 0).value_or("?")];
        }
    } catch (const PgError& e) {
        if (e.connection_lost)
            throw;
        m_.lost += static_cast<uint64_t>(n);
        spdlog::critical("{} event=messages_lost count={} error={} action=\"their WAL is gone: these messages are "
                         "lost; see atx-applier show for their ids\"",
                         log_, n, logq(e.what()));
        return;
    }
    std::string summary;
    for (const auto& [status, count] : outcome)
        summary += (summary.empty() ? "" : " ") + status + "=" + std::to_string(count);
    m_.repaired += static_cast<uint64_t>(n);
    spdlog::warn("{} event=messages_reapplied count={} outcome=\"{}\" action=\"parked: they run before what the "
                 "stream sends\"",
                 log_, n, summary);
}

void DatabaseWorker::start_workers()
{
    ctx_.reset(new WorkerContext{
        cfg_, dbname_, log_, scope_, dispatcher_, store_, m_,
        // A lock wait must end (and be retried) before the statement's own limit ends it for good.
        SessionSettings{cfg_.statement_timeout_ms > 0 &&
                                (cfg_.lock_timeout_ms == 0 || cfg_.lock_timeout_ms >= cfg_.statement_timeout_ms)
                            ? std::max<uint32_t>(1, cfg_.statement_timeout_ms / 2)
                            : cfg_.lock_timeout_ms,
                        cfg_.statement_timeout_ms, cfg_.max_attempts, !standby_flush_,
                        // A batch stops taking messages well before park_after, so that one that runs that
                        // long has a slow message in it, not just many (dispatcher.h: slow lanes, parking).
                        cfg_.park_after_ms > 0 ? std::max<uint32_t>(1, cfg_.park_after_ms / 4) : 0},
        policy_, [this](const std::vector<Pending>& items, Lsn commit) { on_handled(items, commit); },
        [this](const std::string& why) {
            std::lock_guard<std::mutex> lock(fatal_mu_);
            fatal_ = why;
            has_fatal_ = true;
        }});
    ctx_->sync_commits = sync_commits_;
    if (cfg_.statement_timeout_ms > 0) {  // before any message runs
        watch_ = std::make_unique<DeadlineWatch>(cfg_.conninfo, dbname_, log_, cfg_.statement_timeout_ms,
                                                 cfg_.terminate_grace_ms, [this] { return all_workers(); });
        watch_->start();
    }
    for (uint32_t i = 0; i < cfg_.apply_sessions; ++i) {
        auto w = std::make_shared<ApplyWorker>(*ctx_, WorkerKind::Regular, static_cast<int>(i));
        w->start();
        std::lock_guard<std::mutex> lock(pools_mu_);
        workers_.push_back(std::move(w));
    }
}

// Ends the apply backends of these workers (the applier stops, or starts its sessions over):
// their transactions roll back, and the losses count against nothing. Through the control
// connection, or a new one when it is gone; a worker whose backend cannot be reached stops
// waiting for it anyway (the server ends the statement when it notices).
void DatabaseWorker::end_backends(const std::vector<ApplyWorker*>& ws)
{
    std::vector<std::optional<std::string>> pids;
    for (auto* w : ws) {
        w->ending_for_stop();
        if (int pid = w->activity().backend_pid)
            pids.push_back(std::to_string(pid));
    }
    if (!pids.empty()) {
        try {
            PgConn fresh;
            PgConn* c = &control_;
            if (!control_.connected()) {
                fresh.connect(
                    cfg_.conninfo,
                    {{"dbname", dbname_}, {"application_name", "atx-applier control"}, {"connect_timeout", "2"}});
                c = &fresh;
            }
            c->exec("SELECT pg_catalog.pg_terminate_backend(p) FROM pg_catalog.unnest($1::pg_catalog.int4[]) p",
                    {pg_array_literal(pids)});
        } catch (const PgError& e) {
            spdlog::warn("{} event=end_apply_sessions_failed error={}", log_, logq(e.what()));
        }
    }
    for (auto* w : ws)
        w->abandon();
}

void DatabaseWorker::stop_workers(bool cancel)
{
    dispatcher_.stop();
    const auto until = Clock::now() + (cancel ? milliseconds(0) : kStopGrace);
    for (auto* pool : {&workers_, &nested_})
        for (auto& w : *pool)
            w->stop();
    std::vector<ApplyWorker*> left;
    for (auto* pool : {&workers_, &nested_})
        for (auto& w : *pool) {
            while (!w->exited() && Clock::now() < until && !cancelled_)
                std::this_thread::sleep_for(milliseconds(10));
            if (!w->exited())
                left.push_back(w.get());
        }
    if (!left.empty())
        end_backends(left);
    for (auto* pool : {&workers_, &nested_})
        for (auto& w : *pool)
            w->join();
    if (watch_) {
        watch_->stop();  // deadlines held until every worker is back
        watch_.reset();
    }
    {
        std::lock_guard<std::mutex> lock(pools_mu_);
        workers_.clear();
        nested_.clear();
    }
    ctx_.reset();
    dispatcher_.clear();
}

std::vector<std::shared_ptr<ApplyWorker>> DatabaseWorker::all_workers()
{
    std::lock_guard<std::mutex> lock(pools_mu_);
    std::vector<std::shared_ptr<ApplyWorker>> all(workers_);
    all.insert(all.end(), nested_.begin(), nested_.end());
    return all;
}

// A nested atx_exec waits for a message that no regular session can take (they are all busy,
// possibly with the very statements that wait): one more session from the nested pool.
void DatabaseWorker::maybe_grow_nested()
{
    if (std::any_of(nested_.begin(), nested_.end(), [](const auto& w) { return w->exited(); })) {
        std::vector<std::shared_ptr<ApplyWorker>> keep;
        for (auto& w : nested_) {
            if (w->exited())
                w->join();  // dropped only once joined
            else
                keep.push_back(w);
        }
        std::lock_guard<std::mutex> lock(pools_mu_);
        nested_.swap(keep);
    }
    if (!dispatcher_.nested_waiting()) {
        nested_wanted_since_ = {};
        return;
    }
    const auto now = Clock::now();
    if (nested_wanted_since_ == Clock::time_point{})
        nested_wanted_since_ = now;
    if (now - nested_wanted_since_ < kNestedAfter || nested_.size() >= cfg_.nested_sessions)
        return;
    for (const auto& w : nested_)
        if (!w->busy())
            return;  // an idle nested session will take it
    auto w = std::make_shared<ApplyWorker>(*ctx_, WorkerKind::Nested, static_cast<int>(nested_.size()));
    w->start();
    {
        std::lock_guard<std::mutex> lock(pools_mu_);
        nested_.push_back(std::move(w));
    }
    nested_wanted_since_ = {};
    spdlog::info("{} event=nested_session_started count={}", log_, nested_.size());
}

WorkerResult DatabaseWorker::session()
{
    has_fatal_ = false;
    reported_flush_ = 0;
    m_.tick();
    if (m_.get_state() != DbState::Standby)
        m_.set_state(DbState::Connecting);

    open_control();
    stream_.connect(cfg_.conninfo, dbname_);
    try {
        check_failover();
    } catch (const PgError& e) {
        if (e.connection_lost)
            throw;
        // A check that cannot run must not keep the database from being applied.
        spdlog::error("{} event=failover_check_failed error={}", log_, logq(e.what()));
    }
    {
        std::lock_guard<std::mutex> lock(progress_mu_);
        progress_.reset(slot_confirmed_);
    }
    reported_flush_ = slot_confirmed_;
    stream_.start(slot_, 0);
    streamed_ = true;
    if (m_.get_state() == DbState::Standby)
        spdlog::info("{} event=takeover slot={} action=\"the other applier is gone; this one streams\"", log_, slot_);
    m_.set_state(DbState::Streaming);
    m_.set_error("");
    m_.attempted = true;
    dispatcher_.clear();
    load_retrying();
    load_parked();
    unsent_check_ = false;
    try {
        // From where this stream begins: a check cut short goes on from there (the slot was not
        // confirmed past what it had read), and a standby applier that saw the timeline change
        // long before it takes over reads from where it takes over.
        if (store_.get_meta(scope_, "unsent_check").value_or("") == "pending") {
            unsent_check_ = true;
            unsent_from_ = slot_confirmed_;
        }
    } catch (const StateError& e) {
        spdlog::error("{} event=state_read_failed error={}", log_, logq(e.what()));
    }
    start_workers();
    spdlog::info("{} event=streaming slot={} from={} sessions={} role_budget={}", log_, slot_, lsn(slot_confirmed_),
                 cfg_.apply_sessions, cfg_.max_sessions_per_role);

    // From here on, what this thread asks the server must not wait on a lock that an apply
    // transaction may hold for as long as its statement runs (atx.park waits for the horizon, which
    // atx.prune holds while it waits for a row of a running batch): the stream, the slot and the
    // other roles' messages would wait with it. A wait that long fails, and is tried again later.
    control_.exec(kBookkeepingLockTimeoutSql);
    const auto now0 = Clock::now();
    next_status_ = now0 + milliseconds(cfg_.status_interval_ms);
    next_durability_ = now0;
    next_prune_ = now0 + milliseconds(cfg_.prune_interval_ms);
    next_park_ = now0 + kParkEvery;
    next_unsent_scan_ = now0 + kUnsentScanEvery;
    last_data_ = now0;
    for (;;) {
        m_.tick();
        if (stop_) {
            // Finish what runs, confirm what is durable, leave.
            stop_workers(cancelled_);
            poll_durability();
            send_status();
            spdlog::info("{} event=stream_stopped confirmed={}", log_, lsn(reported_flush_));
            return WorkerResult::Stopped;
        }
        if (has_fatal_) {
            std::lock_guard<std::mutex> lock(fatal_mu_);
            throw std::runtime_error(fatal_);
        }
        if (auto data = stream_.read(kRead)) {
            handle_frame(*data);
            // Drain what is buffered before the periodic work.
            for (int i = 0; i < 1000; ++i) {
                auto more = stream_.read(milliseconds(0));
                if (!more)
                    break;
                handle_frame(*more);
            }
        }
        const auto now = Clock::now();
        if (now >= next_durability_)
            poll_durability();
        if (now >= next_status_)
            send_status();
        if (cfg_.durability == "auto" && now >= next_rule_check_)
            follow_synchronous_standbys(true);
        if (now >= next_prune_ && !prune_.busy()) {
            if (!prune_.connected()) {
                prune_.connect(cfg_.conninfo, {{"dbname", dbname_}, {"application_name", "atx-applier prune"}});
                prune_.exec(kBookkeepingLockTimeoutSql);  // it holds the horizon while it waits
            }
            prune_.send("SELECT atx.prune()");
            next_prune_ = now + milliseconds(cfg_.prune_interval_ms);
        }
        try {
            prune_.poll();
        } catch (const PgError& e) {
            if (e.connection_lost)
                throw;
            // A row of a running batch, a lock wait cut short: the next round prunes it.
            if (now - last_prune_error_ > std::chrono::minutes(1)) {
                spdlog::warn("{} event=prune_failed sqlstate={} error={} action=\"trying again in {} ms\"", log_,
                             e.sqlstate.empty() ? "-" : e.sqlstate, logq(e.what()), cfg_.prune_interval_ms);
                last_prune_error_ = now;
            }
        }
        if (now >= next_slot_check_)
            check_slot(false);
        if (now >= next_park_) {
            maybe_park(now);
            slot_held(now);
        }
        if (unsent_check_ && now >= next_unsent_scan_) {
            // Nothing sent yet: the messages written meanwhile may be skipped too (find_unsent).
            next_unsent_scan_ = now + kUnsentScanEvery;
            try {
                find_unsent(
                    parse_lsn(control_.scalar("SELECT pg_catalog.pg_current_wal_flush_lsn()::text").value_or(""))
                        .value_or(0));
            } catch (const PgError& e) {
                if (e.connection_lost)
                    throw;
                unsent_check_failed(e);
            }
        }
        maybe_grow_nested();
        if (cfg_.once && idle_and_confirmed()) {
            stop_workers(false);
            spdlog::info("{} event=idle_exit confirmed={}", log_, lsn(reported_flush_));
            return WorkerResult::Finished;
        }
    }
}

void DatabaseWorker::handle_frame(const std::string& data)
{
    CopyMessage m = parse_copy_data(data);
    if (auto* k = std::get_if<Keepalive>(&m)) {
        {
            std::lock_guard<std::mutex> lock(progress_mu_);
            progress_.keepalive(k->wal_end);
        }
        m_.received_lsn = k->wal_end;
        if (k->reply_requested)
            send_status();
        return;
    }
    const auto& x = std::get<XLogData>(m);
    last_data_ = Clock::now();
    const Frame f = parse_frame(x.payload);
    handle_message(f.start, x.data_start, f.payload);
}

Pending DatabaseWorker::pending_of(Lsn start, Lsn end, std::string_view payload)
{
    Pending p;
    p.start = start;
    p.end = end;
    try {
        const Message msg = decode_payload(payload).message;
        p.id = msg.id;
        p.lane = msg.lane;
        p.as.role_oid = msg.role_oid;
        // The principal: the login that caused it (version 1 carries none: its role).
        p.as.principal_oid = msg.session_role_oid ? msg.session_role_oid : msg.role_oid;
        p.role_name = msg.role_name;
        p.depth = msg.depth;
        p.waited = msg.waited;
        p.emit_time = msg.emit_time;
    } catch (const UnsupportedVersion& e) {
        // Never applied or dead-lettered here: a newer applier must get it. Stop before it.
        throw NotReady("message at " + lsn(start) + ": " + e.what() + "; stream paused before it, upgrade atx-applier");
    } catch (const DecodeError& e) {
        // The server reads it from its WAL and dead-letters it (22P03); it runs in a lane of its own.
        spdlog::warn("{} event=undecodable_message lsn={} bytes={} error={}", log_, lsn(start), payload.size(),
                     logq(e.what()));
        for (int i = 0; i < 8; ++i)
            p.lane[static_cast<size_t>(i)] = static_cast<uint8_t>(start >> (56 - 8 * i));
    }
    // A message that was being retried before a restart keeps its attempts.
    if (auto it = retrying_.find(p.id); it != retrying_.end())
        p.attempts = it->second;
    return p;
}

void DatabaseWorker::handle_message(Lsn start, Lsn end, std::string_view payload)
{
    m_.received_lsn = end;
    if (unsent_check_)
        try {
            end_unsent_check(start);
        } catch (const PgError& e) {
            if (e.connection_lost)
                throw;
            unsent_check_failed(e);  // the next round of the check tries again
        }
    if (parked_lsns_.count(start)) {
        // Parked before this stream began (the slot had not passed it yet): its copy runs.
        std::lock_guard<std::mutex> lock(progress_mu_);
        progress_.received(start, end);
        progress_.handled(start, parked_load_lsn_);
        return;
    }
    Pending p = pending_of(start, end, payload);
    ++m_.received;
    {
        std::lock_guard<std::mutex> lock(progress_mu_);
        progress_.received(start, end);
    }
    const Lsn copy_start = p.start;
    if (!dispatcher_.add(std::move(p))) {
        spdlog::debug("{} event=copy_of_queued_message lsn={}", log_, lsn(copy_start));
        std::lock_guard<std::mutex> lock(progress_mu_);
        progress_.handled(copy_start, 0);
    }
}

// The oldest message the slot waits for has waited longer than one message may run plus 10 s
// (the bound of docs/security.md's second invariant): said every 30 s while it lasts, with
// where the dispatcher has it, so that a slot held by what should have moved on says why.
void DatabaseWorker::slot_held(Clock::time_point now)
{
    Lsn oldest = 0;
    {
        std::lock_guard<std::mutex> lock(progress_mu_);
        oldest = progress_.oldest_pending();
    }
    if (oldest != held_lsn_) {
        held_lsn_ = oldest;
        held_since_ = now;
        next_held_report_ = now + milliseconds(cfg_.statement_timeout_ms) + std::chrono::seconds(10);
        return;
    }
    if (oldest == 0 || cfg_.statement_timeout_ms == 0 || now < next_held_report_)
        return;
    next_held_report_ = now + std::chrono::seconds(30);
    spdlog::warn("{} event=slot_held lsn={} held_s={} where=\"{}\" action=\"the slot and the WAL it keeps wait "
                 "for this message\"",
                 log_, lsn(oldest), std::chrono::duration_cast<std::chrono::seconds>(now - held_since_).count(),
                 dispatcher_.where(oldest));
}

// Messages parked before (by this applier before a restart, or by another before a failover)
// go to their lanes before anything the stream sends: they are older. Their WAL may be gone.
// The messages being retried when this stream begins, by id (one read of the state store, instead
// of one per message the stream sends): those past the slot's position, and the parked ones.
void DatabaseWorker::load_retrying()
{
    retrying_.clear();
    try {
        for (const auto& r : store_.list(scope_, SIZE_MAX, slot_confirmed_))
            if (r.status == DeliveryStatus::Retrying)
                if (auto id = uuid_from_string(r.message_id))
                    retrying_[*id] = r.attempts;
    } catch (const StateError& e) {
        spdlog::warn("{} event=state_read_failed error={} action=\"messages retried before start again at their "
                     "first attempt\"",
                     log_, logq(e.what()));
    }
}

void DatabaseWorker::load_parked()
{
    parked_lsns_.clear();
    PgResult r = control_.exec("SELECT lsn::text, payload FROM atx.applied WHERE payload IS NOT NULL ORDER BY lsn");
    const int n = PQntuples(r.get());
    if (n == 0)
        return;
    parked_load_lsn_ =
        parse_lsn(control_.scalar("SELECT pg_catalog.pg_current_wal_insert_lsn()::text").value_or("")).value_or(0);
    add_parked(r);
    spdlog::info("{} event=parked_loaded count={} first={} action=\"they run from their copies before what the "
                 "stream sends\"",
                 log_, n, field(r.get(), 0, 0).value_or("-"));
}

// Rows (lsn, payload) of parked records: to their lanes (those this stream has not loaded yet),
// and their stream copies are counted handled (handle_message). Returns their starts.
std::vector<Lsn> DatabaseWorker::add_parked(const PgResult& r)
{
    const int n = PQntuples(r.get());
    std::vector<Pending> loaded;
    std::vector<Lsn> starts;
    for (int i = 0; i < n; ++i) {
        const Lsn start = parse_lsn(field(r.get(), i, 0).value_or("")).value_or(0);
        if (parked_lsns_.count(start))
            continue;
        size_t len = 0;
        unsigned char* raw = PQunescapeBytea(reinterpret_cast<const unsigned char*>(PQgetvalue(r.get(), i, 1)), &len);
        if (raw == nullptr)
            throw std::bad_alloc();
        Pending p;
        try {
            p = pending_of(start, start, std::string_view(reinterpret_cast<const char*>(raw), len));
        } catch (...) {
            PQfreemem(raw);
            throw;
        }
        PQfreemem(raw);
        p.parked = true;
        try {  // below the slot's position: not among those load_retrying() read
            if (auto rec = store_.find_message(scope_, uuid_to_string(p.id));
                rec && rec->status == DeliveryStatus::Retrying)
                p.attempts = rec->attempts;
        } catch (const StateError&) {
        }
        parked_lsns_.insert(start);
        starts.push_back(start);
        loaded.push_back(std::move(p));
    }
    // A waited nested message parked with its parent (both behind a long statement, or both lost
    // with a failover) runs after the parent's new run, in the parent's lane: that run emits it
    // again and waits for it (same id: the copy then finds it handled). Run first, by itself, it
    // would be cancelled (nobody waits for it) and hand that outcome to the parent's new wait.
    std::unordered_map<Id, Id, IdHash> lane_of;
    for (const auto& q : loaded)
        lane_of.emplace(q.id, q.lane);
    for (auto& q : loaded) {
        if (q.depth > 0 && q.waited)
            if (auto it = lane_of.find(q.lane); it != lane_of.end())
                q.lane = it->second;
        dispatcher_.add(std::move(q));
    }
    return starts;
}

// After a timeline change the new primary's slot may be a copy (Patroni copies the slot's state
// file, not the decoding snapshot saved beside it). Decoding from it must rebuild that snapshot
// from running-transaction records first, and until it is consistent PostgreSQL skips
// non-transactional logical messages (decode.c, logicalmsg_decode): the stream never sends them.
// So until the stream sends a first message (decoding is consistent by then), the applier reads
// the WAL from where the stream began itself (atx.messages_between), parks every message there
// with no record, and confirms nothing past what it has read. That a check is due is kept in the
// state store: a restart or a reconnect meanwhile reads again from the slot's position.
void DatabaseWorker::find_unsent(Lsn upto)
{
    constexpr int kChunk = 10000;
    size_t parked = 0, found = 0;
    const Lsn from = unsent_from_;
    while (unsent_from_ < upto) {
        // next_lsn: where the scan got to, a record boundary (never past a record only partly
        // flushed, which a later scan reads whole).
        PgResult r = control_.exec("SELECT m.next_lsn::text, l::text FROM atx.messages_between($1::pg_catalog.pg_lsn, "
                                   "$2::pg_catalog.pg_lsn, $3::pg_catalog.int4) m "
                                   "LEFT JOIN LATERAL pg_catalog.unnest(m.lsns) l ON true",
                                   {format_lsn(unsent_from_), format_lsn(upto), std::to_string(kChunk)});
        const int n = PQntuples(r.get());
        const Lsn next = n > 0 ? parse_lsn(field(r.get(), 0, 0).value_or("")).value_or(0) : 0;
        std::vector<std::optional<std::string>> lsns;
        for (int i = 0; i < n; ++i)
            if (auto l = field(r.get(), i, 1))
                lsns.push_back(l);
        found += lsns.size();
        if (!lsns.empty()) {
            PgResult missing = control_.exec("SELECT l::text FROM atx.unapplied($1::pg_catalog.pg_lsn[]) l ORDER BY l",
                                             {pg_array_literal(lsns)});
            std::vector<std::optional<std::string>> gone;
            for (int i = 0; i < PQntuples(missing.get()); ++i)
                if (!parked_lsns_.count(parse_lsn(field(missing.get(), i, 0).value_or("")).value_or(0)))
                    gone.push_back(field(missing.get(), i, 0));
            if (!gone.empty())
                control_.exec("SELECT status FROM atx.park($1::pg_catalog.pg_lsn[])", {pg_array_literal(gone)});
            // Every parked copy among them this stream does not run yet: also one parked by an
            // earlier round of the check that failed before it loaded them.
            PgResult rows = control_.exec("SELECT lsn::text, payload FROM atx.applied WHERE payload IS NOT NULL "
                                          "AND lsn = ANY($1::pg_catalog.pg_lsn[]) ORDER BY lsn",
                                          {pg_array_literal(lsns)});
            const Lsn commit =
                parse_lsn(control_.scalar("SELECT pg_catalog.pg_current_wal_insert_lsn()::text").value_or(""))
                    .value_or(0);
            parked_load_lsn_ = std::max(parked_load_lsn_, commit);
            const std::vector<Lsn> added = add_parked(rows);
            parked += added.size();
            // The slot passes them once their copies are durable, as for any parked message.
            std::lock_guard<std::mutex> lock(progress_mu_);
            for (Lsn start : added) {
                progress_.received(start, start);
                progress_.handled(start, commit);
            }
        }
        if (next <= unsent_from_)
            break;  // the end of the flushed WAL: the next round goes on
        unsent_from_ = next;
        send_status();  // a long scan must not look dead to the walsender (wal_sender_timeout)
    }
    m_.lost_found += parked;
    m_.repaired += parked;
    if (parked > 0)
        spdlog::critical("{} event=messages_unsent count={} from={} upto={} action=\"the new primary's copy of the "
                         "slot skipped them (its decoding was not consistent yet): parked, they run from their "
                         "copies\"",
                         log_, parked, lsn(from), lsn(unsent_from_));
    else if (found > 0)
        spdlog::debug("{} event=unsent_check from={} upto={} messages={} unsent=0", log_, lsn(from), lsn(unsent_from_),
                      found);
}

// The slot stays where the check got to (confirmable()) until it can go on: a message it could
// not read is never passed silently. Said once a minute.
void DatabaseWorker::unsent_check_failed(const PgError& e)
{
    const auto now = Clock::now();
    if (now - last_unsent_error_ < std::chrono::minutes(1))
        return;
    last_unsent_error_ = now;
    spdlog::error("{} event=unsent_check_failed from={} sqlstate={} error={} action=\"the slot is not confirmed "
                  "past {} until the WAL there has been read; trying again\"",
                  log_, lsn(unsent_from_), e.sqlstate.empty() ? "-" : e.sqlstate, logq(e.what()), lsn(unsent_from_));
}

void DatabaseWorker::end_unsent_check(Lsn first_sent)
{
    if (first_sent > unsent_from_)
        find_unsent(first_sent);
    unsent_check_ = false;
    try {
        store_.put_meta(scope_, "unsent_check", "");
    } catch (const StateError& e) {
        spdlog::error("{} event=state_write_failed error={}", log_, logq(e.what()));
    }
    spdlog::info("{} event=unsent_check_done first_sent={} action=\"the stream's decoding is consistent: it sends "
                 "every message from here\"",
                 log_, lsn(first_sent));
}

// Messages stuck behind a long-running statement of their lane or principal are copied into
// the server, so that the slot (and the WAL it keeps) moves past them (dispatcher.h).
void DatabaseWorker::maybe_park(Clock::time_point now)
{
    next_park_ = now + kParkEvery;
    if (cfg_.park_after_ms == 0)
        return;
    const std::vector<Pending> cands = dispatcher_.park_candidates(now - milliseconds(cfg_.park_after_ms), kParkMax);
    if (cands.empty())
        return;
    std::vector<std::optional<std::string>> lsns;
    for (const auto& p : cands)
        lsns.push_back(format_lsn(p.start));
    std::vector<Lsn> done;
    size_t parked = 0, handled = 0;
    try {
        PgResult r =
            control_.exec("SELECT lsn::text, status FROM atx.park($1::pg_catalog.pg_lsn[])", {pg_array_literal(lsns)});
        const Lsn commit =
            parse_lsn(control_.scalar("SELECT pg_catalog.pg_current_wal_insert_lsn()::text").value_or("")).value_or(0);
        std::unordered_map<Lsn, std::string> status;
        for (int i = 0; i < PQntuples(r.get()); ++i)
            status[parse_lsn(field(r.get(), i, 0).value_or("")).value_or(0)] = field(r.get(), i, 1).value_or("");
        std::lock_guard<std::mutex> lock(progress_mu_);
        for (const auto& p : cands) {
            // 'handled': a record of its id is there and no run of this copy can do more than
            // find it (ext/parked.cc): the slot may pass it as a parked one, and its run, when
            // its lane gets to it, says 'already'. Anything else runs, and its run says so.
            const std::string& s = status[p.start];
            if (s != "parked" && s != "handled")
                continue;
            done.push_back(p.start);
            progress_.handled(p.start, commit);
            ++(s == "parked" ? parked : handled);
        }
    } catch (const PgError& e) {
        dispatcher_.park_failed();
        if (e.connection_lost)
            throw;
        if (now - last_park_error_ > std::chrono::minutes(1)) {
            spdlog::error("{} event=park_failed sqlstate={} error={} action=\"the slot waits for these messages; "
                          "trying again\"",
                          log_, e.sqlstate.empty() ? "-" : e.sqlstate, logq(e.what()));
            last_park_error_ = now;
        }
        return;
    }
    std::vector<Lsn> tried;
    for (const auto& p : cands)
        tried.push_back(p.start);
    dispatcher_.parked(done, tried);
    m_.parked_total += parked;
    if (parked + handled > 0)
        spdlog::info("{} event=parked count={} handled_before={} first={} role={} reason=\"waited {} ms behind a "
                     "long-running statement of their lane or role\" action=\"copied into atx.applied; the slot may "
                     "pass them, they run later\"",
                     log_, parked, handled, lsn(cands.front().start), logq(cands.front().role_name),
                     cfg_.park_after_ms);
}

void DatabaseWorker::on_handled(const std::vector<Pending>& items, Lsn commit_lsn)
{
    if (ATX_BROKEN("confirm_before_durable"))
        commit_lsn = 0;  // a deliberate bug for tests (fault.h): counted durable at once
    if (items.empty())
        return;
    int64_t last_emit = 0;
    Lsn last = 0;
    {
        std::lock_guard<std::mutex> lock(progress_mu_);
        for (const auto& p : items) {
            // Callers of atx_exec are woken by the commit itself, unless that commit must first
            // reach the standbys (standby-flush): then by atx.wake once it has. A parked message
            // counted as handled for the slot when it was parked.
            if (!p.parked)
                progress_.handled(p.start, commit_lsn, p.waited && standby_flush_, p.id);
            else if (p.waited && standby_flush_)
                progress_.handled_untracked(commit_lsn, p.id);
            last_emit = std::max(last_emit, p.emit_time);
            last = std::max(last, p.start);
        }
    }
    m_.messages_applied(last_emit, last);
}

void DatabaseWorker::poll_durability()
{
    size_t waiting;
    {
        std::lock_guard<std::mutex> lock(progress_mu_);
        waiting = progress_.not_durable();
        // What was handled by now committed before the query below reads the insert position.
        if (waiting > 0 && control_.connected())
            progress_.stamp_begin();
    }
    next_durability_ = Clock::now() + (waiting > 0 ? kDurabilityPoll : milliseconds(cfg_.status_interval_ms));
    if (waiting == 0 || !control_.connected())
        return;
    // The standby's position through the extension: this role cannot read pg_stat_replication's
    // positions itself (they need pg_read_all_stats), and NULLs would read as "no standby".
    PgResult r = control_.exec(std::string("SELECT pg_catalog.pg_current_wal_flush_lsn()::text, "
                                           "pg_catalog.pg_current_wal_insert_lsn()::text") +
                               (standby_flush_ ? ", atx.standby_flush_lsn()::text" : ""));
    Lsn durable = parse_lsn(field(r.get(), 0, 0).value_or("")).value_or(0);
    const Lsn inserted = parse_lsn(field(r.get(), 0, 1).value_or("")).value_or(0);
    if (standby_flush_)
        if (auto standby = field(r.get(), 0, 2))
            durable = std::min(durable, parse_lsn(*standby).value_or(0));
    std::vector<Id> woken;
    Lsn oldest;
    {
        std::lock_guard<std::mutex> lock(progress_mu_);
        if (inserted > 0)
            progress_.stamp_end(inserted);
        progress_.durable_upto(durable);
        woken = progress_.take_durable_waited();
        oldest = progress_.oldest_stamped();
    }
    nudge_flush(oldest);
    if (!woken.empty()) {
        std::vector<std::optional<std::string>> ids;
        for (const auto& id : woken)
            ids.push_back(uuid_to_string(id));
        control_.exec("SELECT atx.wake($1::pg_catalog.uuid[])", {pg_array_literal(ids)});
    }
}

// The insert position that stands for a commit (Progress::stamp_end) may lie past WAL of a
// transaction still open (a long statement of an apply batch, any session's): nothing asks the
// WAL writer to flush that until the transaction ends, so on a quiet server it may stay
// unflushed until the background writer logs its next snapshot of running transactions (15 s)
// or a checkpoint, and with it the slot and, under standby-flush, atx_exec callers. A stamp
// the flush has not reached after kFlushNudgeAfter gets a transaction of ours that takes an
// xid and commits: its commit record lies past the stamp and is flushed by the WAL writer
// within its delay (asynchronous commit) or at once.
void DatabaseWorker::nudge_flush(Lsn oldest)
{
    const auto now = Clock::now();
    if (oldest != stalled_at_) {
        stalled_at_ = oldest;
        stalled_since_ = now;
        return;
    }
    if (oldest == 0 || now - stalled_since_ < kFlushNudgeAfter || now - last_nudge_ < kFlushNudgeAfter)
        return;
    last_nudge_ = now;
    spdlog::debug("{} event=flush_nudged waiting_for={} reason=\"the WAL before it is not flushed yet\"", log_,
                  lsn(oldest));
    try {
        control_.exec("SELECT pg_catalog.pg_current_xact_id()::text");
    } catch (const PgError& e) {
        if (e.connection_lost)
            throw;
        // The next poll tries again; the flush still comes with the next snapshot or checkpoint.
        spdlog::warn("{} event=flush_nudge_failed sqlstate={} error={}", log_, e.sqlstate.empty() ? "-" : e.sqlstate,
                     logq(e.what()));
    }
}

// Caller holds progress_mu_: what may be confirmed to the slot; during the unsent check no more
// than the WAL read so far (find_unsent).
Lsn DatabaseWorker::confirmable() const
{
    const Lsn c = progress_.confirm_position();
    return unsent_check_ ? std::min(c, unsent_from_) : c;
}

void DatabaseWorker::send_status()
{
    Lsn flush, received;
    size_t pending;
    {
        std::lock_guard<std::mutex> lock(progress_mu_);
        flush = confirmable();
        received = progress_.received_end();
        pending = progress_.pending();
    }
    flush = std::max(flush, reported_flush_);
    if (flush > reported_flush_)
        ATX_FAULT_POINT("before_confirm");
    stream_.send_status(std::max(received, flush), flush, flush);
    if (flush != reported_flush_)
        spdlog::trace("{} event=confirmed flush={} pending={}", log_, lsn(flush), pending);
    reported_flush_ = flush;
    m_.confirmed_lsn = flush;
    const int64_t oldest = dispatcher_.oldest_emit();
    m_.pending_emit_us = oldest ? pg_to_unix_us(oldest) : 0;
    m_.queued = dispatcher_.queued();
    m_.in_flight = dispatcher_.in_flight();
    m_.suspects = dispatcher_.suspects();
    m_.parked = dispatcher_.parked_queued();
    next_status_ = Clock::now() + milliseconds(cfg_.status_interval_ms);
}

bool DatabaseWorker::idle_and_confirmed()
{
    if (dispatcher_.queued() != 0 || dispatcher_.in_flight() != 0 ||
        Clock::now() - last_data_ < milliseconds(cfg_.idle_exit_ms))
        return false;
    poll_durability();
    size_t pending;
    Lsn confirm;
    {
        std::lock_guard<std::mutex> lock(progress_mu_);
        pending = progress_.pending();
        confirm = confirmable();
    }
    if (pending != 0)
        return false;
    if (reported_flush_ < confirm)
        send_status();
    return reported_flush_ >= confirm;
}

}  // namespace atx::applier
