// See apply_worker.h.
#include "apply_worker.h"

#include <algorithm>
#include <thread>

#include <spdlog/spdlog.h>

#include "fault.h"
#include "logging.h"
#include "message.h"
#include "progress.h"

namespace atx::applier {

namespace {

using std::chrono::milliseconds;

constexpr milliseconds kTake{200};
constexpr milliseconds kReconnectMin{100};
constexpr milliseconds kReconnectMax{2000};
constexpr milliseconds kBatchErrorBackoff{1000};
// How long a lost backend may still show in the registry as it was before it counts as alive (its
// connection dropped): a reap and the server's restart take milliseconds, on a loaded host more.
constexpr milliseconds kLossSettleTime{5000};
constexpr std::chrono::seconds kNestedIdleExit{30};

std::string id_text(const Pending& p) { return uuid_to_string(p.id); }

std::string lsn(Lsn l) { return format_lsn(l); }

// The log line of a failure: bounded (the full text is in the dead letter).
std::string bounded(const std::string& s) { return s.size() > 300 ? s.substr(0, 300) + "..." : s; }

}  // namespace

ApplyWorker::ApplyWorker(WorkerContext& ctx, WorkerKind kind, int number) : ctx_(ctx), kind_(kind), number_(number) {}

ApplyWorker::~ApplyWorker()
{
    stop();
    join();
}

void ApplyWorker::start()
{
    thread_ = std::thread([this] { run(); });
}

void ApplyWorker::stop() { stop_ = true; }

void ApplyWorker::abandon()
{
    stop_ = true;
    ending_for_stop_ = true;
    session_.abandon();
}

WorkerActivity ApplyWorker::activity() const
{
    WorkerActivity a;
    a.backend_pid = session_.backend_pid();
    const int64_t ns = busy_since_ns_.load();
    if (ns != 0)
        a.since = std::chrono::steady_clock::time_point(std::chrono::steady_clock::duration(ns));
    return a;
}

void ApplyWorker::join()
{
    if (thread_.joinable())
        thread_.join();
}

// The delivery history is what the failover check reads (database_worker.cc): a handled message
// must be recorded before it may be confirmed. A write that fails (a full disk) is retried, and
// meanwhile this worker reports nothing, so nothing past it is confirmed; the other workers stop
// at their next write too.
void ApplyWorker::record(const std::vector<DeliveryRecord>& records, bool sync)
{
    if (records.empty())
        return;
    auto last_log = std::chrono::steady_clock::time_point{};
    bool broken = false;
    while (!stop_) {
        try {
            ctx_.store.record(ctx_.scope, records, sync);
            if (broken)
                spdlog::warn("{} event=state_recovered worker={} action=\"confirming and applying again\"", ctx_.log,
                             number_);
            return;
        } catch (const StateError& e) {
            broken = true;
            if (std::chrono::steady_clock::now() - last_log >= std::chrono::seconds(5)) {
                spdlog::critical("{} event=state_write_failed worker={} error={} action=\"not confirming and not "
                                 "applying until the RocksDB write succeeds; retrying\"",
                                 ctx_.log, number_, logq(e.what()));
                last_log = std::chrono::steady_clock::now();
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(500));
        }
    }
}

void ApplyWorker::connect(bool settle)
{
    session_.want_synchronous_commit(ctx_.sync_commits.load());
    session_.connect(ctx_.cfg.conninfo, ctx_.dbname, ctx_.settings,
                     (kind_ == WorkerKind::Nested ? "nested-" : "") + std::to_string(number_));
    if (settle)
        ctx_.dispatcher.settle(session_.server_start());
}

void ApplyWorker::run()
{
    milliseconds backoff = kReconnectMin;
    auto idle_since = std::chrono::steady_clock::now();
    while (!stop_) {
        if (!session_.connected()) {
            ctx_.dispatcher.wake_others();  // what this worker gave back is not coming back to it soon
            try {
                connect();
                backoff = kReconnectMin;
                spdlog::debug("{} event=apply_session_connected worker={}{}", ctx_.log,
                              kind_ == WorkerKind::Nested ? "nested-" : "", number_);
            } catch (const PgError& e) {
                spdlog::warn("{} event=apply_session_connect_failed worker={} error={} retry_in_ms={}", ctx_.log,
                             number_, logq(e.what()), backoff.count());
                std::this_thread::sleep_for(backoff);
                backoff = std::min(backoff * 2, kReconnectMax);
                continue;
            }
        }
        auto b = ctx_.dispatcher.take(kind_, session_.serves(), kTake);
        if (!b) {
            if (kind_ == WorkerKind::Nested && std::chrono::steady_clock::now() - idle_since > kNestedIdleExit)
                break;
            continue;
        }
        // A session serves one role and principal for its life: another's batch gets a backend
        // of its own, so that nothing the last role's code left in this one reaches it.
        if (session_.serves() && *session_.serves() != b->as) {
            try {
                switch_to(b->as);
            } catch (const PgError& e) {
                spdlog::warn("{} event=apply_session_connect_failed worker={} error={}", ctx_.log, number_,
                             logq(e.what()));
                session_.close();
                ctx_.dispatcher.release(*b, std::chrono::steady_clock::now() + backoff);
                continue;
            }
        }
        busy_ = true;
        busy_since_ns_ = std::chrono::steady_clock::now().time_since_epoch().count();
        run_batch(*b);
        busy_since_ns_ = 0;
        busy_ = false;
        idle_since = std::chrono::steady_clock::now();
    }
    ctx_.dispatcher.wake_others();
    session_.close();
    spare_.clear();
    exited_ = true;
}

void ApplyWorker::switch_to(const RunAs& as)
{
    const size_t keep = kind_ == WorkerKind::Regular ? ctx_.cfg.spare_sessions : 0;
    for (size_t i = 0; i < spare_.size(); ++i) {
        if (spare_[i]->serves() && *spare_[i]->serves() == as && spare_[i]->connected()) {
            std::unique_ptr<ApplySession> s = std::move(spare_[i]);
            spare_.erase(spare_.begin() + static_cast<std::ptrdiff_t>(i));
            session_.swap_connection(*s);  // s now holds the session of the previous role
            spare_.push_back(std::move(s));
            return;
        }
    }
    ++ctx_.metrics.session_switches;
    if (keep == 0) {
        connect();
        return;
    }
    std::unique_ptr<ApplySession> s;
    if (spare_.size() >= keep) {
        s = std::move(spare_.front());
        spare_.erase(spare_.begin());
        s->close();
    } else {
        s = std::make_unique<ApplySession>();
    }
    session_.swap_connection(*s);  // session_ is now closed
    spare_.push_back(std::move(s));
    connect();
}

void ApplyWorker::run_batch(const Batch& b)
{
    session_.want_synchronous_commit(ctx_.sync_commits.load());
    // The applier's own verdict (overdue and ended; its backend lost too often): dead-lettered,
    // never run again. The dispatcher hands such a message over alone.
    if (b.items.front().verdict) {
        condemn(b, *b.items.front().verdict);
        return;
    }
    if (b.items.front().top_level) {  // alone (Dispatcher::lease)
        ApplyResult r;
        r.error = "its top-level run was deferred before";
        top_level(b, 0, r);
        return;
    }
    // A retried message (it runs alone) gets what is left of its retry window, at least a second,
    // at most the limit; past the window its attempt is the last. So it is final within the
    // window and its time limit, whatever made it fail.
    Batch batch = b;
    const int64_t now_us = unix_now_us();
    uint32_t timeout_ms = ctx_.cfg.statement_timeout_ms;
    for (auto& p : batch.items) {
        if (!p.first_failed_us)
            continue;
        const int64_t left_ms = (p.first_failed_us + int64_t(ctx_.cfg.max_retry_seconds) * 1000000 - now_us) / 1000;
        if (left_ms <= 0)
            p.attempts = std::max(p.attempts, ctx_.settings.max_attempts - 1);
        if (timeout_ms > 0)
            timeout_ms = static_cast<uint32_t>(std::clamp<int64_t>(left_ms, 1000, timeout_ms));
    }

    const auto t0 = std::chrono::steady_clock::now();
    try {
        std::vector<ApplyResult> results = session_.apply(batch.items, batch.as, timeout_ms);
        const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        ctx_.metrics.apply_seconds.observe(seconds);
        ++ctx_.metrics.batches;
        spdlog::debug("{} event=batch_applied worker={} messages={} first_lsn={} ms={:.1f}", ctx_.log, number_,
                      batch.items.size(), lsn(batch.items.front().start), seconds * 1000);
        handle_results(batch, results);
        // Memory a statement made the backend keep is returned only by ending the backend.
        const int64_t bytes = results.empty() ? 0 : results.back().backend_bytes;
        if (ctx_.cfg.session_memory_limit_mb > 0 && bytes > int64_t(ctx_.cfg.session_memory_limit_mb) * 1048576) {
            ++ctx_.metrics.session_recycles;
            spdlog::info("{} event=apply_session_recycled worker={} backend_mb={} limit_mb={}", ctx_.log, number_,
                         bytes / 1048576, ctx_.cfg.session_memory_limit_mb);
            session_.close();
        }
    } catch (const PgError& e) {
        if (e.connection_lost || !session_.connected() || PQstatus(session_.conn().get()) != CONNECTION_OK) {
            handle_loss(batch, e);
            return;
        }
        // The batch failed as a whole (nothing committed): its SQL, the WAL it names, the server
        // going read-only. Back to its lane for a later try.
        spdlog::error("{} event=batch_failed worker={} first_lsn={} messages={} sqlstate={} error={} retry_in_ms={}",
                      ctx_.log, number_, lsn(batch.items.front().start), batch.items.size(),
                      e.sqlstate.empty() ? "-" : e.sqlstate, logq(bounded(e.what())), kBatchErrorBackoff.count());
        ctx_.dispatcher.release(batch, std::chrono::steady_clock::now() + kBatchErrorBackoff);
    }
}

void ApplyWorker::handle_results(const Batch& b, const std::vector<ApplyResult>& results)
{
    std::vector<Pending> handled;
    std::vector<DeliveryRecord> records;
    bool sync = false;
    const int64_t now_us = unix_now_us();
    // A synchronous commit was durable when it returned; where an asynchronous one ends is found
    // by the durability poll.
    const Lsn durable_commit = session_.synchronous_commit() ? 0 : Progress::kCommitUnknown;

    for (size_t i = 0; i < results.size(); ++i) {
        const ApplyResult& r = results[i];
        const Pending& p = b.items[i];
        DeliveryRecord rec;
        rec.message_id = id_text(p);
        rec.source_lsn = p.start;
        rec.attempts = p.attempts + 1;
        rec.updated_at_us = now_us;
        switch (r.status) {
        case ApplyStatus::Applied:
            ++ctx_.metrics.applied;
            rec.status = DeliveryStatus::Applied;
            records.push_back(rec);
            handled.push_back(p);
            break;
        case ApplyStatus::Duplicate:
            ++ctx_.metrics.duplicate;
            rec.status = DeliveryStatus::Duplicate;
            spdlog::info("{} event=duplicate message_id={} lsn={} role={} action=\"not executed: its role applied "
                         "its idempotency key before\"",
                         ctx_.log, rec.message_id, lsn(p.start), logq(p.role_name));
            records.push_back(rec);
            handled.push_back(p);
            break;
        case ApplyStatus::Already:
            spdlog::debug("{} event=handled_before message_id={} lsn={}", ctx_.log, rec.message_id, lsn(p.start));
            handled.push_back(p);
            break;
        case ApplyStatus::Dead:
            ++ctx_.metrics.dead_lettered;
            if (r.failure == "unauthenticated")
                ++ctx_.metrics.rejected;
            rec.status = DeliveryStatus::Dead;
            rec.last_sqlstate = r.sqlstate;
            rec.last_error = bounded(r.error);
            records.push_back(rec);
            sync = true;
            handled.push_back(p);
            spdlog::warn(
                "{} event=dead_lettered message_id={} lsn={} role={} sqlstate={} class={} attempts={} error={}",
                ctx_.log, rec.message_id, lsn(p.start), logq(p.role_name), r.sqlstate, logq(r.failure), rec.attempts,
                logq(bounded(r.error)));
            break;
        case ApplyStatus::Retry: {
            ++ctx_.metrics.retried;
            const milliseconds delay = ctx_.policy.backoff(p.attempts + 1);
            rec.status = DeliveryStatus::Retrying;
            rec.last_sqlstate = r.sqlstate;
            rec.last_error = bounded(r.error);
            records.push_back(rec);
            spdlog::info("{} event=retry message_id={} lsn={} role={} attempt={} sqlstate={} error={} backoff_ms={}",
                         ctx_.log, rec.message_id, lsn(p.start), logq(p.role_name), rec.attempts, r.sqlstate,
                         logq(bounded(r.error)), delay.count());
            record(records, true);
            ctx_.on_handled(handled, durable_commit);
            ctx_.dispatcher.retry_later(b, i, std::chrono::steady_clock::now() + delay, now_us);
            return;
        }
        case ApplyStatus::Nonatomic: {
            // Needs a top-level run (COMMIT inside, VACUUM, CREATE INDEX CONCURRENTLY); the
            // messages before it are handled, the ones after it wait for it.
            record(records, sync);
            ctx_.on_handled(handled, durable_commit);
            top_level(b, i, r);
            return;
        }
        case ApplyStatus::Skipped:
            i = results.size();  // what follows waits for the message that stopped the batch
            break;
        case ApplyStatus::Rejected:
            spdlog::critical("{} event=message_rejected lsn={} sqlstate={} error={} action=\"the server refused what "
                             "the applier named as a message; starting over\"",
                             ctx_.log, lsn(p.start), r.sqlstate, logq(r.error));
            record(records, sync);
            ctx_.on_handled(handled, durable_commit);
            ctx_.dispatcher.release_after(b, handled.size(),
                                          std::chrono::steady_clock::now() + std::chrono::seconds(5));
            ctx_.on_fatal("the server rejected the message at " + lsn(p.start) + ": " + r.error);
            return;
        }
    }
    record(records, sync);
    ATX_FAULT_POINT("after_state_write");
    ctx_.on_handled(handled, durable_commit);
    ctx_.dispatcher.done(b, handled.size());
}

void ApplyWorker::handle_loss(const Batch& b, const PgError& e)
{
    const int pid = session_.backend_pid();
    const std::string server_start = session_.server_start();
    const Lsn overdue = overdue_lsn_.exchange(0);
    session_.close();
    spare_.clear();  // the server may have restarted: none of them is to be trusted
    ++ctx_.metrics.backend_losses;
    auto message_at = [&](Lsn at) -> const Pending* {
        for (const auto& p : b.items)
            if (p.start == at)
                return &p;
        return nullptr;
    };
    if (const Pending* p = overdue ? message_at(overdue) : nullptr) {
        // This applier ended the backend: the message overstayed its limit.
        ++ctx_.metrics.overdue_terminated;
        spdlog::warn("{} event=message_overdue message_id={} lsn={} role={} action=\"its backend was ended; it is "
                     "dead-lettered (57014), the rest of its batch goes back to its lane\"",
                     ctx_.log, id_text(*p), lsn(p->start), logq(p->role_name));
        ctx_.dispatcher.condemn(b, p->id, Verdict::Timeout);
        return;
    }
    if (ending_for_stop_ || stop_) {
        // The applier ended it (stopping, or starting over after its stream failed): when the
        // stream failed because the server restarted, this backend's loss may have been the
        // cause, and the reconnect's settle() must learn of it as of any unexplained loss.
        ctx_.dispatcher.lost_unexplained(b, server_start);
        return;
    }
    // What the server's registry says the backend was doing when it went. (Connected without
    // settling: a loss left unexplained below must be known before the new server's start is.)
    std::optional<std::string> state;
    Lsn running = 0;
    try {
        connect(false);
        state = session_.registry_state(pid, &running);
        // A SIGKILLed backend never runs its exit hook: until the postmaster reaps it (and then
        // restarts the server, ending this connection too) the registry still shows it as it was.
        // Read right after the loss, "running" is as often a backend that died a moment ago as
        // one whose connection merely dropped, and taking it for the latter let a crash go
        // uncounted: the message that caused it ran once more than --max-backend-losses allows
        // (found by the hostile-message fuzzer). So ask again until the registry changes, the
        // server restarts, or the backend has stayed for longer than any reap takes.
        const auto deadline = std::chrono::steady_clock::now() + kLossSettleTime;
        while (state && (*state == "running" || *state == "idle") && !stop_ &&
               std::chrono::steady_clock::now() < deadline) {
            std::this_thread::sleep_for(std::chrono::milliseconds(50));
            state = session_.registry_state(pid, &running);
        }
    } catch (const PgError&) {
        session_.close();
        state.reset();
    }
    if (state && *state == "exited") {
        if (const Pending* p = message_at(running)) {
            spdlog::warn("{} event=apply_session_lost worker={} message_id={} lsn={} role={} error={} action=\"its "
                         "backend exited while it ran: one more loss for it ({} lead to a dead letter); the rest of "
                         "its batch goes back to its lane\"",
                         ctx_.log, number_, id_text(*p), lsn(p->start), logq(p->role_name), logq(bounded(e.what())),
                         ctx_.cfg.max_backend_losses);
            ctx_.dispatcher.lost_running(b, p->id);
            return;
        }
    }
    if (state) {
        // Alive (the connection dropped), or exited between messages: not the batch's doing.
        spdlog::warn("{} event=apply_session_lost worker={} messages={} backend={} error={} action=\"back to their "
                     "lanes\"",
                     ctx_.log, number_, b.items.size(), *state, logq(bounded(e.what())));
        ctx_.dispatcher.release(b, std::chrono::steady_clock::now());
        return;
    }
    spdlog::warn("{} event=apply_session_lost worker={} messages={} suspect_run={} cause=unexplained error={} "
                 "action=\"back to their lanes; if a reconnect finds the server restarted, {}\"",
                 ctx_.log, number_, b.items.size(), b.suspect, logq(bounded(e.what())),
                 b.suspect ? "it counts against the message that ran alone"
                           : "its messages become suspects and run alone, one at a time");
    ctx_.dispatcher.lost_unexplained(b, server_start);
    if (session_.connected())
        ctx_.dispatcher.settle(session_.server_start());
}

bool ApplyWorker::run_top_level(const Pending& p, const ApplyResult& r, const Batch& b, Lsn* commit_lsn,
                                DeliveryRecord* rec)
{
    const RunAs& as = b.as;
    const bool more = &p != &b.items.back();  // the lane's next message is in this batch
    // Background workers are few (max_worker_processes): each principal gets its share.
    if (!ctx_.dispatcher.acquire_nonatomic(as.principal_oid, b.lane)) {
        spdlog::info("{} event=top_level_run_deferred message_id={} role={} reason=\"no background worker share "
                     "free for its principal\"",
                     ctx_.log, id_text(p), logq(p.role_name));
        return false;
    }
    spdlog::info("{} event=top_level_run message_id={} lsn={} role={} reason={}", ctx_.log, id_text(p), lsn(p.start),
                 logq(p.role_name), logq(bounded(r.error)));
    NonatomicResult t;
    try {
        t = session_.run_nonatomic(p, commit_lsn);
        if (t.status == "in doubt") {
            // The worker died while the statement ran, or overstayed its limit and was ended: it
            // may have committed part of its work.
            const Verdict v = t.sqlstate == "57014" ? Verdict::Timeout : Verdict::InDoubt;
            session_.dead_letter(p, v, commit_lsn);
            t.status = "dead";
            t.sqlstate = v == Verdict::Timeout ? "57014" : "40003";
            t.error = v == Verdict::Timeout ? "ran past its time limit and was ended: in doubt"
                                            : "interrupted while it ran: in doubt";
        }
    } catch (const PgError& e) {
        ctx_.dispatcher.release_nonatomic(as.principal_oid, std::chrono::steady_clock::now(), b.lane, more);
        spdlog::warn("{} event=top_level_run_failed message_id={} error={}", ctx_.log, id_text(p), logq(e.what()));
        session_.close();
        return false;
    }
    ctx_.dispatcher.release_nonatomic(as.principal_oid, std::chrono::steady_clock::now(), b.lane, more);
    if (t.status == "retry") {
        spdlog::warn("{} event=top_level_run_deferred message_id={} error={}", ctx_.log, id_text(p), logq(t.error));
        return false;
    }
    rec->status = t.status == "dead" ? DeliveryStatus::Dead : DeliveryStatus::Applied;
    rec->last_sqlstate = t.sqlstate;
    rec->last_error = bounded(t.error);
    if (t.status == "dead") {
        ++ctx_.metrics.dead_lettered;
        spdlog::warn("{} event=dead_lettered message_id={} lsn={} role={} sqlstate={} class=top-level error={}",
                     ctx_.log, id_text(p), lsn(p.start), logq(p.role_name), t.sqlstate, logq(bounded(t.error)));
    } else if (t.status == "applied") {
        ++ctx_.metrics.applied;
    }
    return true;
}

// Runs b's message i at the top level (the ones before it are handled). Deferred (no background
// worker free for its principal) or broken off, it goes back to its lane marked, so that next
// time it goes straight here instead of running atomically once more (Pending::top_level).
void ApplyWorker::top_level(const Batch& b, size_t i, const ApplyResult& r)
{
    const Pending& p = b.items[i];
    DeliveryRecord rec;
    rec.message_id = id_text(p);
    rec.source_lsn = p.start;
    rec.attempts = p.attempts + 1;
    rec.updated_at_us = unix_now_us();
    Lsn top_commit = 0;
    if (!run_top_level(p, r, b, &top_commit, &rec)) {
        Batch back = b;
        back.items[i].top_level = true;
        ctx_.dispatcher.release_after(back, i, std::chrono::steady_clock::now() + kBatchErrorBackoff);
        return;
    }
    record({rec}, true);
    ctx_.on_handled({p}, session_.synchronous_commit() ? 0 : top_commit);
    ctx_.dispatcher.done(b, i + 1);
}

bool ApplyWorker::condemn(const Batch& b, Verdict v)
{
    const Pending& p = b.items.front();
    Lsn commit_lsn = 0;
    try {
        session_.dead_letter(p, v, &commit_lsn);
    } catch (const PgError& e) {
        spdlog::warn("{} event=dead_letter_failed message_id={} error={}", ctx_.log, id_text(p), logq(e.what()));
        session_.close();
        ctx_.dispatcher.release(b, std::chrono::steady_clock::now() + kBatchErrorBackoff);
        return false;
    }
    ++ctx_.metrics.dead_lettered;
    const char* sqlstate = v == Verdict::Timeout ? "57014" : v == Verdict::BackendLost ? "08006" : "40003";
    spdlog::error("{} event=dead_lettered message_id={} lsn={} role={} sqlstate={} verdict={}", ctx_.log, id_text(p),
                  lsn(p.start), logq(p.role_name), sqlstate, verdict_name(v));
    DeliveryRecord rec;
    rec.message_id = id_text(p);
    rec.source_lsn = p.start;
    rec.status = DeliveryStatus::Dead;
    rec.attempts = p.attempts + 1;
    rec.last_sqlstate = sqlstate;
    rec.last_error = std::string("verdict ") + verdict_name(v);
    rec.updated_at_us = unix_now_us();
    record({rec}, true);
    ctx_.on_handled({p}, session_.synchronous_commit() ? 0 : commit_lsn);
    ctx_.dispatcher.done(b, 1);
    return true;
}

}  // namespace atx::applier
