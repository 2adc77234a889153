// See apply_worker.h.
#include "apply_worker.h"

#include <spdlog/spdlog.h>

#include "fault.h"
#include "logging.h"
#include "message.h"

namespace atx::applier {

namespace {

using std::chrono::milliseconds;

constexpr milliseconds kTake{200};
constexpr milliseconds kReconnectMin{100};
constexpr milliseconds kReconnectMax{2000};
constexpr milliseconds kBatchErrorBackoff{1000};
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

void ApplyWorker::cancel()
{
    stop_ = true;
    session_.request_cancel();
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

void ApplyWorker::run()
{
    milliseconds backoff = kReconnectMin;
    auto idle_since = std::chrono::steady_clock::now();
    while (!stop_) {
        if (!session_.connected()) {
            ctx_.dispatcher.wake_others();  // what this worker gave back is not coming back to it soon
            try {
                session_.want_synchronous_commit(ctx_.sync_commits.load());
                session_.connect(ctx_.cfg.conninfo, ctx_.dbname, ctx_.settings,
                                 (kind_ == WorkerKind::Nested ? "nested-" : "") + std::to_string(number_));
                backoff = kReconnectMin;
                spdlog::debug("{} event=apply_session_connected worker={}{}", ctx_.log,
                              kind_ == WorkerKind::Nested ? "nested-" : "", number_);
                ctx_.dispatcher.settle(session_.server_start());
            } catch (const PgError& e) {
                spdlog::warn("{} event=apply_session_connect_failed worker={} error={} retry_in_ms={}", ctx_.log,
                             number_, logq(e.what()), backoff.count());
                std::this_thread::sleep_for(backoff);
                backoff = std::min(backoff * 2, kReconnectMax);
                continue;
            }
        }
        auto b = ctx_.dispatcher.take(kind_, kTake);
        if (!b) {
            if (kind_ == WorkerKind::Nested && std::chrono::steady_clock::now() - idle_since > kNestedIdleExit)
                break;
            continue;
        }
        busy_ = true;
        run_batch(*b);
        busy_ = false;
        idle_since = std::chrono::steady_clock::now();
    }
    ctx_.dispatcher.wake_others();
    session_.close();
    exited_ = true;
}

void ApplyWorker::run_batch(const Batch& b)
{
    session_.want_synchronous_commit(ctx_.sync_commits.load());
    // A suspect whose apply backend was lost often enough while it ran alone never runs again.
    if (b.suspect && b.items.front().losses >= ctx_.cfg.max_backend_losses) {
        condemn(b, "08006",
                "the apply backend was lost " + std::to_string(b.items.front().losses) +
                    " times while this message ran alone (killed, crashed or out of memory); not retried");
        return;
    }
    // A message failing for longer than the retry budget gets its last attempt now.
    Batch batch = b;
    const int64_t now_us = unix_now_us();
    for (auto& p : batch.items)
        if (p.first_failed_us && now_us - p.first_failed_us > int64_t(ctx_.cfg.max_retry_seconds) * 1000000)
            p.attempts = std::max(p.attempts, ctx_.settings.max_attempts - 1);

    const auto t0 = std::chrono::steady_clock::now();
    try {
        Lsn commit_lsn = 0;
        std::vector<ApplyResult> results = session_.apply(batch.items, &commit_lsn);
        const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        ctx_.metrics.apply_seconds.observe(seconds);
        ++ctx_.metrics.batches;
        spdlog::debug("{} event=batch_applied worker={} messages={} first_lsn={} commit_lsn={} ms={:.1f}", ctx_.log,
                      number_, batch.items.size(), lsn(batch.items.front().start), lsn(commit_lsn), seconds * 1000);
        handle_results(batch, results, commit_lsn);
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

void ApplyWorker::handle_results(const Batch& b, const std::vector<ApplyResult>& results, Lsn commit_lsn)
{
    std::vector<Pending> handled;
    std::vector<DeliveryRecord> records;
    bool sync = false;
    const int64_t now_us = unix_now_us();
    size_t i = 0;
    bool retry = false;
    const Lsn durable_commit = session_.synchronous_commit() ? 0 : commit_lsn;

    for (; i < results.size(); ++i) {
        const ApplyResult& r = results[i];
        const Pending& p = b.items[i];
        DeliveryRecord rec;
        rec.message_id = id_text(p);
        rec.source_lsn = p.start;
        rec.attempts = p.attempts + 1;
        rec.updated_at_us = now_us;
        if (r.status == "applied" || r.status == "duplicate" || r.status == "already") {
            if (r.status == "applied") {
                ++ctx_.metrics.applied;
                rec.status = DeliveryStatus::Applied;
            } else if (r.status == "duplicate") {
                ++ctx_.metrics.duplicate;
                rec.status = DeliveryStatus::Duplicate;
                spdlog::info("{} event=duplicate message_id={} lsn={} role={} action=\"not executed: its role applied "
                             "its idempotency key before\"",
                             ctx_.log, rec.message_id, lsn(p.start), logq(p.role_name));
            } else {
                spdlog::debug("{} event=handled_before message_id={} lsn={}", ctx_.log, rec.message_id, lsn(p.start));
            }
            if (r.status != "already")
                records.push_back(rec);
            handled.push_back(p);
        } else if (r.status == "dead") {
            ++ctx_.metrics.dead_lettered;
            if (r.failure == "unauthenticated")
                ++ctx_.metrics.rejected;
            rec.status = DeliveryStatus::Dead;
            rec.last_sqlstate = r.sqlstate;
            rec.last_error = bounded(r.error);
            records.push_back(rec);
            sync = true;
            handled.push_back(p);
            spdlog::warn("{} event=dead_lettered message_id={} lsn={} role={} sqlstate={} class={} attempts={} error={}",
                         ctx_.log, rec.message_id, lsn(p.start), logq(p.role_name), r.sqlstate, logq(r.failure),
                         rec.attempts, logq(bounded(r.error)));
        } else if (r.status == "retry") {
            ++ctx_.metrics.retried;
            const milliseconds delay = ctx_.policy.backoff(p.attempts + 1);
            rec.status = DeliveryStatus::Retrying;
            rec.last_sqlstate = r.sqlstate;
            rec.last_error = bounded(r.error);
            records.push_back(rec);
            sync = true;
            spdlog::info("{} event=retry message_id={} lsn={} role={} attempt={} sqlstate={} error={} backoff_ms={}",
                         ctx_.log, rec.message_id, lsn(p.start), logq(p.role_name), rec.attempts, r.sqlstate,
                         logq(bounded(r.error)), delay.count());
            ctx_.dispatcher.retry_later(b, i, std::chrono::steady_clock::now() + delay, now_us);
            retry = true;
            break;
        } else if (r.status == "nonatomic") {
            // Needs a top-level run (COMMIT inside, VACUUM, CREATE INDEX CONCURRENTLY); the
            // messages before it are handled, the ones after it wait for it.
            Lsn top_commit = 0;
            if (!run_top_level(p, r, &top_commit, &rec)) {
                record(records, sync);
                ctx_.on_handled(handled, durable_commit);
                ctx_.dispatcher.release_after(b, handled.size(), std::chrono::steady_clock::now() + kBatchErrorBackoff);
                return;
            }
            records.push_back(rec);
            record(records, true);
            records.clear();
            ctx_.on_handled(handled, durable_commit);
            handled.clear();
            ctx_.on_handled({p}, session_.synchronous_commit() ? 0 : top_commit);
            ctx_.dispatcher.done(b, i + 1);
            return;
        } else if (r.status == "skipped") {
            break;
        } else if (r.status == "rejected") {
            spdlog::critical("{} event=message_rejected lsn={} sqlstate={} error={} action=\"the server refused what "
                             "the applier named as a message; starting over\"",
                             ctx_.log, lsn(p.start), r.sqlstate, logq(r.error));
            record(records, sync);
            ctx_.on_handled(handled, durable_commit);
            ctx_.dispatcher.release_after(b, handled.size(), std::chrono::steady_clock::now() + std::chrono::seconds(5));
            ctx_.on_fatal("the server rejected the message at " + lsn(p.start) + ": " + r.error);
            return;
        } else {
            throw PgError("atx.apply_batch returned unknown status '" + r.status + "'", "", false);
        }
    }
    record(records, sync);
    ATX_FAULT_POINT("after_state_write");
    ctx_.on_handled(handled, durable_commit);
    if (!retry)
        ctx_.dispatcher.done(b, handled.size());
}

void ApplyWorker::handle_loss(const Batch& b, const PgError& e)
{
    session_.note_shutdown_sqlstate(e.sqlstate);
    const bool told = session_.told_shutdown();
    const std::string server_start = session_.server_start();
    session_.close();
    ++ctx_.metrics.backend_losses;
    if (told) {
        // pg_terminate_backend, a shutdown, or another process's crash: not this batch's doing.
        spdlog::warn("{} event=apply_session_lost worker={} messages={} cause=shutdown error={} "
                     "action=\"back to their lanes\"",
                     ctx_.log, number_, b.items.size(), logq(bounded(e.what())));
        ctx_.dispatcher.release(b, std::chrono::steady_clock::now());
        return;
    }
    spdlog::warn("{} event=apply_session_lost worker={} messages={} suspect_run={} cause=unexplained error={} "
                 "action=\"back to their lanes; if a reconnect finds the server restarted, {}\"",
                 ctx_.log, number_, b.items.size(), b.suspect, logq(bounded(e.what())),
                 b.suspect ? "it counts against the message that ran alone"
                           : "its messages become suspects and run alone, one at a time");
    ctx_.dispatcher.lost_unexplained(b, server_start);
}

bool ApplyWorker::run_top_level(const Pending& p, const ApplyResult& r, Lsn* commit_lsn, DeliveryRecord* rec)
{
    spdlog::info("{} event=top_level_run message_id={} lsn={} role={} reason={}", ctx_.log, id_text(p), lsn(p.start),
                 logq(p.role_name), logq(bounded(r.error)));
    ApplyResult t;
    try {
        t = session_.run_nonatomic(p, commit_lsn);
        if (t.status == "in doubt") {
            // The worker died while the statement ran: it may have committed part of it.
            session_.dead_letter(p, "40003", "a non-atomic message was interrupted while it ran: it may have committed "
                                 "part of its work, so it is not run again", commit_lsn);
            t.status = "dead";
            t.sqlstate = "40003";
            t.error = "interrupted while it ran: in doubt";
        }
    } catch (const PgError& e) {
        session_.close();
        return false;
    }
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

bool ApplyWorker::condemn(const Batch& b, const std::string& sqlstate, const std::string& why)
{
    const Pending& p = b.items.front();
    Lsn commit_lsn = 0;
    try {
        session_.dead_letter(p, sqlstate, why, &commit_lsn);
    } catch (const PgError& e) {
        spdlog::warn("{} event=dead_letter_failed message_id={} error={}", ctx_.log, id_text(p), logq(e.what()));
        session_.close();
        ctx_.dispatcher.release(b, std::chrono::steady_clock::now() + kBatchErrorBackoff);
        return false;
    }
    ++ctx_.metrics.dead_lettered;
    spdlog::error("{} event=dead_lettered message_id={} lsn={} role={} sqlstate={} error={}", ctx_.log, id_text(p),
                  lsn(p.start), logq(p.role_name), sqlstate, logq(why));
    DeliveryRecord rec;
    rec.message_id = id_text(p);
    rec.source_lsn = p.start;
    rec.status = DeliveryStatus::Dead;
    rec.attempts = p.attempts + 1;
    rec.last_sqlstate = sqlstate;
    rec.last_error = why;
    rec.updated_at_us = unix_now_us();
    record({rec}, true);
    ctx_.on_handled({p}, session_.synchronous_commit() ? 0 : commit_lsn);
    ctx_.dispatcher.done(b, 1);
    return true;
}

}  // namespace atx::applier
