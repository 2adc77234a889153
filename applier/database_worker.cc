// Per-database worker; see database_worker.h for the positions and the confirmation rule.
#include "database_worker.h"

#include <algorithm>

#include <spdlog/spdlog.h>

#include "fault.h"
#include "logging.h"

namespace atx::applier {

namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr milliseconds kTick{100};
constexpr milliseconds kSlotCheckEvery{30000};
constexpr milliseconds kReconnectMin{1000};
constexpr milliseconds kReconnectMax{30000};

// Shutdown requested: leave without committing or confirming anything new.
struct Interrupted {};

// The slot is invalidated: stop this database for good.
class SlotLost : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// Something to wait for (extension missing, a newer message format, ...): retry later.
class NotReady : public std::runtime_error {
public:
    NotReady(const std::string& m, milliseconds wait) : std::runtime_error(m), wait(wait) {}
    milliseconds wait;
};

std::string lsn(Lsn l) { return format_lsn(l); }

// Dead letters of payloads that were malformed, forged or of an unknown format (metrics only).
bool rejected_sqlstate(const std::string& s) { return s == "22P03" || s == "28000" || s == "0A000"; }

}  // namespace

DatabaseWorker::DatabaseWorker(const Config& cfg, std::string dbname, StateStore& store,
                               const std::atomic<bool>& stop)
    : cfg_(cfg), dbname_(std::move(dbname)), log_("db=" + logq(dbname_)), store_(store), stop_(stop),
      m_(metrics().db(dbname_))
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

void DatabaseWorker::cancel_in_flight()
{
    cancelled_ = true;
    apply_.request_cancel();
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
            spdlog::error("{} event=slot_lost slot={} error={} action=\"stopping this database; the "
                          "slot is not re-created automatically: drop it and restart to resume "
                          "(messages it held are lost)\"",
                          log_, slot_, logq(e.what()));
            res = WorkerResult::SlotLost;
            break;
        } catch (const NotReady& e) {
            m_.set_state(DbState::NotReady);
            m_.set_error(e.what());
            if (cfg_.once) {
                spdlog::error("{} event=not_ready error={} action=\"giving up (--once)\"", log_,
                              logq(e.what()));
                res = WorkerResult::Failed;
                break;
            }
            spdlog::error("{} event=not_ready error={} retry_in_ms={}", log_, logq(e.what()),
                          e.wait.count());
            wait = e.wait;
        } catch (const PgError& e) {
            m_.set_error(e.what());
            if (e.sqlstate == "55006") {
                // The slot or the apply origin is held by another applier: this one is a standby.
                // Poll every second (not the error backoff) so that it takes over quickly.
                if (m_.get_state() != DbState::Standby)
                    spdlog::info("{} event=standby error={} action=\"another applier holds the "
                                 "slot/origin; retrying every {} ms\"",
                                 log_, logq(e.what()), kReconnectMin.count());
                m_.set_state(DbState::Standby);
                teardown();
                try {
                    sleep_interruptible(kReconnectMin);
                } catch (const Interrupted&) {
                    break;
                }
                backoff = kReconnectMin;
                continue;
            }
            spdlog::error("{} event={} sqlstate={} error={} retry_in_ms={}", log_,
                          e.connection_lost ? "connection_error" : "session_error",
                          e.sqlstate.empty() ? "-" : e.sqlstate, logq(e.what()), wait.count());
        } catch (const StateError& e) {
            spdlog::error("{} event=state_error error={} retry_in_ms={}", log_, logq(e.what()),
                          wait.count());
        } catch (const DecodeError& e) {
            spdlog::error("{} event=protocol_error error={} retry_in_ms={}", log_, logq(e.what()),
                          wait.count());
        } catch (const Interrupted&) {
            teardown();
            break;
        } catch (const std::exception& e) {
            spdlog::error("{} event=unexpected_error error={} retry_in_ms={}", log_, logq(e.what()),
                          wait.count());
        }
        teardown();
        if (stop_)
            break;
        m_.attempted = true;
        ++m_.reconnects;
        if (m_.get_state() != DbState::NotReady)
            m_.set_state(DbState::Connecting);
        // A session that reached streaming resets the backoff.
        if (streamed_ && wait == backoff)
            wait = backoff = kReconnectMin;
        streamed_ = false;
        try {
            sleep_interruptible(wait);
        } catch (const Interrupted&) {
            break;
        }
        backoff = std::min(backoff * 2, kReconnectMax);
    }
    teardown();
    if (res == WorkerResult::Running)
        res = WorkerResult::Stopped;
    result_ = res;
    m_.set_state(res == WorkerResult::SlotLost ? DbState::SlotLost : DbState::Stopped);
    spdlog::info("{} event=worker_exit result={}", log_,
                 res == WorkerResult::Finished ? "finished"
                 : res == WorkerResult::SlotLost ? "slot_lost"
                 : res == WorkerResult::Failed   ? "failed"
                                                 : "stopped");
    done_ = true;
}

void DatabaseWorker::teardown()
{
    stream_.close();
    apply_.close();
    batch_.clear();
}

void DatabaseWorker::sleep_interruptible(milliseconds d, bool keep_walsender)
{
    const auto until = Clock::now() + d;
    while (Clock::now() < until) {
        if (stop_)
            throw Interrupted{};
        m_.tick();
        std::this_thread::sleep_for(std::min<Clock::duration>(kTick, until - Clock::now()));
        if (keep_walsender && Clock::now() >= next_status_)
            send_status(true);
    }
}

void DatabaseWorker::open_session()
{
    apply_.connect(cfg_.conninfo, dbname_);
    PgConn& c = apply_.conn();
    const auto oid = c.scalar("SELECT oid FROM pg_database WHERE datname = current_database()");
    if (!oid)
        throw PgError("current database not found in pg_database", "", false);
    oid_ = static_cast<uint32_t>(std::stoul(*oid));
    slot_ = "pg_atx_" + *oid;
    origin_ = "pg_atx_apply_" + *oid;
    scope_ = "db" + *oid;
    if (!c.scalar("SELECT extversion FROM pg_extension WHERE extname = 'pg_atx'"))
        throw NotReady("extension pg_atx is not installed in database " + dbname_ +
                           " (CREATE EXTENSION pg_atx)",
                       kReconnectMax);
    spdlog::info("{} event=connected oid={} slot={} origin={} session=apply", log_, oid_, slot_, origin_);

    // Origin first: its progress tells whether a missing slot existed before.
    const auto origin_id =
        c.scalar("SELECT roident::text FROM pg_replication_origin WHERE roname = $1", {origin_});
    if (!origin_id) {
        // pg_replication_origin_create() refuses "pg_" names; the extension creates it in C.
        const auto made = c.scalar("SELECT atx.ensure_apply_origin()::text");
        if (made.value_or("") != origin_)
            throw PgError("atx.ensure_apply_origin() returned '" + made.value_or("NULL") +
                              "', expected " + origin_,
                          "", false);
        spdlog::info("{} event=origin_created origin={}", log_, origin_);
    }
    check_slot(true);
}

void DatabaseWorker::check_slot(bool initial)
{
    PgConn& c = apply_.conn();
    PgResult r = c.exec("SELECT wal_status, confirmed_flush_lsn::text, plugin::text "
                        "FROM pg_replication_slots WHERE slot_name = $1",
                        {slot_});
    next_slot_check_ = Clock::now() + kSlotCheckEvery;
    if (PQntuples(r.get()) == 0) {
        if (!initial)
            throw PgError("slot " + slot_ + " disappeared while streaming", "", false);
        const auto progress =
            c.scalar("SELECT pg_replication_origin_progress($1, true)::text", {origin_});
        if (progress && parse_lsn(*progress).value_or(0) != 0)
            spdlog::warn("{} event=slot_recreated slot={} origin_progress={} warning=\"the slot was "
                         "missing although this database was applied before; messages emitted "
                         "while no slot existed were never delivered\"",
                         log_, slot_, *progress);
        c.exec("SELECT pg_create_logical_replication_slot($1, 'pg_atx')", {slot_});
        spdlog::info("{} event=slot_created slot={} plugin=pg_atx", log_, slot_);
        r = c.exec("SELECT wal_status, confirmed_flush_lsn::text, plugin::text "
                   "FROM pg_replication_slots WHERE slot_name = $1",
                   {slot_});
        if (PQntuples(r.get()) == 0)
            throw PgError("slot " + slot_ + " vanished right after its creation", "", false);
    }
    const std::string wal_status = field(r.get(), 0, 0).value_or("");
    const std::string plugin = field(r.get(), 0, 2).value_or("");
    if (plugin != "pg_atx")
        throw NotReady("slot " + slot_ + " uses output plugin '" + plugin +
                           "', not pg_atx; drop it or rename it",
                       kReconnectMax);
    if (wal_status == "lost")
        throw SlotLost("slot " + slot_ + " has wal_status 'lost' (invalidated by "
                       "max_slot_wal_keep_size); messages it held are gone");
    if (wal_status == "unreserved")
        spdlog::warn("{} event=slot_at_risk slot={} wal_status=unreserved warning=\"the slot is "
                     "about to be invalidated (max_slot_wal_keep_size); undelivered messages will "
                     "be lost if it is\"",
                     log_, slot_);
    if (initial) {
        const auto confirmed = field(r.get(), 0, 1);
        const Lsn c_lsn = confirmed ? parse_lsn(*confirmed).value_or(0) : 0;
        last_handled_ = reported_flush_ = received_ = keepalive_walend_ = c_lsn;
    }
}

WorkerResult DatabaseWorker::session()
{
    batch_.clear();
    state_broken_ = false;
    applied_upto_ = durable_ = need_durable_ = last_handled_ = 0;
    received_ = keepalive_walend_ = reported_flush_ = 0;
    m_.tick();
    if (m_.get_state() != DbState::Standby)
        m_.set_state(DbState::Connecting);
    m_.queue_drained();

    open_session();
    apply_.setup({cfg_.statement_timeout_ms, cfg_.synchronous_commit}, origin_);
    // While a batch waits on the server, keep the walsender answered (durable progress is not
    // queried then: the apply session is busy, so the last known value is reported).
    apply_.set_wait_callback([this] {
        m_.tick();
        if (stream_.connected() && Clock::now() >= next_status_)
            send_status(false);
    });
    applied_upto_ = apply_.origin_progress(false).value_or(0);
    durable_ = apply_.origin_progress(true).value_or(0);
    need_durable_ = applied_upto_ > durable_ ? applied_upto_ : 0;
    const size_t dropped = store_.reconcile(scope_, durable_);
    spdlog::info("{} event=state_reconciled scope={} durable={} applied_upto={} dropped_entries={}",
                 log_, scope_, lsn(durable_), lsn(applied_upto_), dropped);

    stream_.connect(cfg_.conninfo, dbname_);
    stream_.start(slot_, 0);
    streamed_ = true;
    if (m_.get_state() == DbState::Standby)
        spdlog::info("{} event=takeover slot={} action=\"the other applier is gone; this one streams\"",
                     log_, slot_);
    m_.set_state(DbState::Streaming);
    m_.set_error("");
    m_.attempted = true;
    spdlog::info("{} event=streaming slot={} from={} applied_upto={} durable={}", log_, slot_,
                 lsn(reported_flush_), lsn(applied_upto_), lsn(durable_));

    const auto status_every = milliseconds(cfg_.status_interval_ms);
    next_status_ = Clock::now() + status_every;
    last_data_ = Clock::now();
    try {
        for (;;) {
            m_.tick();
            if (stop_) {
                apply_batch();
                send_status(true);
                spdlog::info("{} event=stream_stopped confirmed={} durable={}", log_,
                             lsn(reported_flush_), lsn(durable_));
                return WorkerResult::Stopped;
            }
            milliseconds wait = milliseconds(0);
            if (batch_.empty()) {
                auto until = std::chrono::duration_cast<milliseconds>(next_status_ - Clock::now());
                wait = std::clamp(until, milliseconds(0), kTick);
            }
            auto data = stream_.read(wait);
            if (!data && !batch_.empty() && cfg_.batch_delay_ms > 0)
                data = stream_.read(milliseconds(cfg_.batch_delay_ms));
            if (data) {
                handle_frame(*data);
                if (batch_.size() >= cfg_.batch_size)
                    apply_batch();
            } else if (!batch_.empty()) {
                apply_batch();
            }

            const auto now = Clock::now();
            if (now >= next_status_)
                send_status(true);
            if (now >= next_slot_check_)
                check_slot(false);
            if (cfg_.once && idle_and_confirmed()) {
                spdlog::info("{} event=idle_exit confirmed={} durable={}", log_, lsn(reported_flush_),
                             lsn(durable_));
                return WorkerResult::Finished;
            }
        }
    } catch (const Interrupted&) {
        // Stop requested in the middle of retries or a broken state write: confirm what is durable.
        try {
            if (stream_.connected() && apply_.conn().connected())
                send_status(true);
        } catch (const std::exception& e) {
            spdlog::warn("{} event=final_status_failed error={}", log_, logq(e.what()));
        }
        return WorkerResult::Stopped;
    }
}

void DatabaseWorker::handle_frame(const std::string& data)
{
    CopyMessage m = parse_copy_data(data);
    if (auto* k = std::get_if<Keepalive>(&m)) {
        keepalive_walend_ = std::max(keepalive_walend_, k->wal_end);
        received_ = std::max(received_, k->wal_end);
        if (k->reply_requested)
            send_status(true);
        return;
    }
    const auto& x = std::get<XLogData>(m);
    received_ = std::max({received_, x.data_start, x.wal_end});
    last_data_ = Clock::now();
    if (x.payload.empty() || x.payload[0] != 'M')
        throw DecodeError("unexpected pg_atx output record (expected 'M') at " + lsn(x.data_start));
    handle_message(x.data_start, x.payload.substr(1));
}

void DatabaseWorker::handle_message(Lsn l, std::string_view payload)
{
    Pending p;
    p.lsn = l;
    if (l <= applied_upto_) {
        // Committed by an earlier session (the slot was not confirmed that far yet).
        p.skip = true;
        m_.message_queued(0);
        spdlog::debug("{} event=skip_applied lsn={} applied_upto={}", log_, lsn(l), lsn(applied_upto_));
        batch_.push_back(std::move(p));
        return;
    }
    try {
        p.msg = decode_payload(payload).message;
    } catch (const UnsupportedVersion& e) {
        // Never apply or dead-letter it: a newer applier must get it. Stop before it.
        apply_batch();
        send_status(true);
        throw NotReady("message at " + lsn(l) + ": " + e.what() +
                           "; stream paused before it, upgrade atx-applier",
                       kReconnectMax);
    } catch (const DecodeError& e) {
        spdlog::warn("{} event=undecodable_message lsn={} bytes={} error={} action=\"sent to "
                     "apply_message, which dead-letters it\"",
                     log_, lsn(l), payload.size(), logq(e.what()));
    }
    p.payload = std::string(payload);
    if (p.msg) {
        const std::string id = uuid_to_string(p.msg->id);
        auto seen = [&](const std::optional<DeliveryRecord>& rec) {
            return rec && rec->source_lsn != l && rec->source_lsn <= durable_ &&
                   (rec->status == DeliveryStatus::Applied || rec->status == DeliveryStatus::Duplicate ||
                    rec->status == DeliveryStatus::Dead);
        };
        auto rec = store_.find_message(scope_, id);
        if (seen(rec)) {
            spdlog::warn("{} event=duplicate_skipped message_id={} lsn={} first_lsn={} first_status={} "
                         "reason=message_id_seen",
                         log_, id, lsn(l), lsn(rec->source_lsn), to_string(rec->status));
            p.skip = true;
            ++m_.duplicate;
        } else if (p.msg->key) {
            if (auto other = store_.find_key(scope_, *p.msg->key); other && *other != id) {
                auto orec = store_.find_message(scope_, *other);
                if (seen(orec) && orec->status == DeliveryStatus::Applied) {
                    spdlog::warn("{} event=duplicate_skipped message_id={} lsn={} key={} "
                                 "applied_by={} reason=key_seen",
                                 log_, id, lsn(l), logq(*p.msg->key), *other);
                    p.skip = true;
                    ++m_.duplicate;
                }
            }
        }
    }
    m_.message_queued(p.msg ? p.msg->emit_time : 0);
    batch_.push_back(std::move(p));
}

std::string DatabaseWorker::id_of(const Pending& p) const
{
    if (p.msg)
        return uuid_to_string(p.msg->id);
    return "undecodable@" + lsn(p.lsn);
}

void DatabaseWorker::apply_batch()
{
    if (batch_.empty())
        return;
    const Lsn first = batch_.front().lsn, last = batch_.back().lsn;
    std::vector<size_t> idx;
    std::vector<ApplyItem> items;
    for (size_t i = 0; i < batch_.size(); ++i)
        if (!batch_[i].skip) {
            idx.push_back(i);
            items.push_back({batch_[i].lsn, batch_[i].payload});
        }
    if (items.empty()) {
        last_handled_ = std::max(last_handled_, last);
        batch_.clear();
        m_.queue_drained();
        return;
    }
    const auto t0 = Clock::now();
    std::vector<ApplyOutcome> out = apply_.begin_and_apply(items);
    if (cancelled_) {
        apply_.rollback();
        throw Interrupted{};
    }
    bool transient = false;
    for (size_t j = 0; j < out.size(); ++j) {
        const auto& o = out[j];
        if (o.status != "applied" && o.status != "duplicate" && o.status != "failed") {
            apply_.rollback();
            throw PgError("atx.apply_message returned unknown status '" + o.status + "'", "", false);
        }
        if (o.status == "failed" && classify_sqlstate(o.sqlstate) == ErrorClass::Transient) {
            spdlog::info("{} event=batch_rolled_back message_id={} lsn={} sqlstate={} error={} "
                         "action=\"apply this batch one message per transaction with retries\"",
                         log_, id_of(batch_[idx[j]]), lsn(items[j].lsn), o.sqlstate, logq(o.error));
            transient = true;
            break;
        }
    }
    if (transient) {
        apply_.rollback();
        apply_singly();
        return;
    }

    const int64_t now_us = unix_now_us();
    std::vector<DeadLetter> dead;
    std::vector<DeliveryRecord> records;
    size_t n_applied = 0, n_dup = 0;
    for (size_t j = 0; j < out.size(); ++j) {
        const Pending& p = batch_[idx[j]];
        const auto& o = out[j];
        DeliveryRecord rec;
        rec.message_id = p.msg ? uuid_to_string(p.msg->id) : o.message_id.value_or(id_of(p));
        rec.key = p.msg && p.msg->key ? *p.msg->key : "";
        rec.source_lsn = p.lsn;
        rec.attempts = 1;
        rec.updated_at_us = now_us;
        if (o.status == "applied") {
            rec.status = DeliveryStatus::Applied;
            ++n_applied;
        } else if (o.status == "duplicate") {
            rec.status = DeliveryStatus::Duplicate;
            ++n_dup;
            spdlog::info("{} event=duplicate message_id={} lsn={} key={} action=\"not executed: its "
                         "idempotency key was applied before\"",
                         log_, rec.message_id, lsn(p.lsn), logq(rec.key));
        } else {
            uint32_t prior = 0;
            int64_t first_failed = now_us;
            if (p.msg)
                if (auto r = store_.find_message(scope_, rec.message_id);
                    r && r->status == DeliveryStatus::Retrying) {
                    prior = r->attempts;
                }
            rec.status = DeliveryStatus::Dead;
            rec.attempts = prior + 1;
            rec.last_sqlstate = o.sqlstate;
            rec.last_error = o.error;
            DeadLetter d;
            d.message_id = p.msg ? std::optional<std::string>(rec.message_id) : o.message_id;
            d.source_lsn = p.lsn;
            d.decoded = p.msg ? &*p.msg : nullptr;
            d.payload = p.payload;
            d.sqlstate = o.sqlstate;
            d.error = o.error;
            d.attempts = rec.attempts;
            d.first_failed_unix_us = first_failed;
            dead.push_back(d);
        }
        records.push_back(std::move(rec));
    }
    apply_.commit(dead, last);
    {
        int64_t last_emit = 0;
        for (const auto& p : batch_)
            if (p.msg)
                last_emit = std::max(last_emit, p.msg->emit_time);
        m_.applied += n_applied;
        m_.duplicate += n_dup;
        m_.dead_lettered += dead.size();
        for (const auto& d : dead)
            if (rejected_sqlstate(d.sqlstate))
                ++m_.rejected;
        ++m_.batches;
        m_.apply_seconds.observe(std::chrono::duration<double>(Clock::now() - t0).count());
        m_.messages_applied(last_emit, last);
    }
    for (const auto& d : dead)
        spdlog::warn("{} event=dead_lettered message_id={} lsn={} sqlstate={} attempts={} error={}",
                     log_, d.message_id.value_or("-"), lsn(d.source_lsn), d.sqlstate, d.attempts,
                     logq(d.error));
    spdlog::debug("{} event=batch_applied count={} applied={} duplicate={} dead={} skipped={} "
                  "first_lsn={} last_lsn={} ms={}",
                  log_, batch_.size(), n_applied, n_dup, dead.size(), batch_.size() - items.size(),
                  lsn(first), lsn(last),
                  std::chrono::duration_cast<milliseconds>(Clock::now() - t0).count());
    batch_.clear();
    m_.queue_drained();
    after_commit(std::move(records), last);
}

void DatabaseWorker::after_commit(std::vector<DeliveryRecord> records, Lsn last)
{
    ATX_FAULT_POINT("after_apply_commit");
    applied_upto_ = std::max(applied_upto_, last);
    need_durable_ = std::max(need_durable_, last);
    if (cfg_.synchronous_commit)
        durable_ = std::max(durable_, last);
    // The server is authoritative for what was applied (origin progress, keys, dead letters), so
    // applied/duplicate history needs no fsync of its own: after an OS crash reconcile() corrects
    // it. Dead-letter and retry history is synced: it is the only record of the attempts.
    bool sync = false;
    for (const auto& r : records)
        if (r.status == DeliveryStatus::Dead || r.status == DeliveryStatus::Retrying)
            sync = true;
    write_state(records, sync);
    ATX_FAULT_POINT("after_state_write");
    last_handled_ = std::max(last_handled_, last);
}

void DatabaseWorker::apply_singly()
{
    // The whole batch was rolled back; apply its messages in order, one per transaction.
    std::vector<Pending> items = std::move(batch_);
    batch_.clear();
    // Keep "something pending" visible to flush_position() while we work through them.
    batch_.push_back(Pending{});
    batch_.back().lsn = items.back().lsn;
    batch_.back().skip = true;

    for (auto& p : items) {
        if (p.skip) {
            last_handled_ = std::max(last_handled_, p.lsn);
            continue;
        }
        const std::string id = id_of(p);
        uint32_t attempts = 0;
        int64_t first_failed = 0;
        if (p.msg)
            if (auto r = store_.find_message(scope_, id); r && r->status == DeliveryStatus::Retrying)
                attempts = r->attempts;
        for (;;) {
            if (stop_)
                throw Interrupted{};
            ApplyItem item{p.lsn, p.payload};
            const auto t0 = Clock::now();
            ApplyOutcome o = apply_.begin_and_apply({item}).at(0);
            if (cancelled_) {
                apply_.rollback();
                throw Interrupted{};
            }
            ++attempts;
            const int64_t now_us = unix_now_us();
            DeliveryRecord rec;
            rec.message_id = p.msg ? id : o.message_id.value_or(id);
            rec.key = p.msg && p.msg->key ? *p.msg->key : "";
            rec.source_lsn = p.lsn;
            rec.attempts = attempts;
            rec.updated_at_us = now_us;
            if (o.status == "applied" || o.status == "duplicate") {
                apply_.commit({}, p.lsn);
                rec.status = o.status == "applied" ? DeliveryStatus::Applied : DeliveryStatus::Duplicate;
                ++(o.status == "applied" ? m_.applied : m_.duplicate);
                ++m_.batches;
                m_.apply_seconds.observe(std::chrono::duration<double>(Clock::now() - t0).count());
                m_.messages_applied(p.msg ? p.msg->emit_time : 0, p.lsn);
                if (attempts > 1)
                    spdlog::info("{} event=retry_succeeded message_id={} lsn={} attempts={}", log_,
                                 rec.message_id, lsn(p.lsn), attempts);
                if (o.status == "duplicate")
                    spdlog::info("{} event=duplicate message_id={} lsn={} key={} action=\"not "
                                 "executed: its idempotency key was applied before\"",
                                 log_, rec.message_id, lsn(p.lsn), logq(rec.key));
                after_commit({rec}, p.lsn);
                break;
            }
            if (o.status != "failed") {
                apply_.rollback();
                throw PgError("atx.apply_message returned unknown status '" + o.status + "'", "", false);
            }
            if (first_failed == 0)
                first_failed = now_us;
            rec.last_sqlstate = o.sqlstate;
            rec.last_error = o.error;
            const ErrorClass cls = classify_sqlstate(o.sqlstate);
            if (cls == ErrorClass::Transient) {
                apply_.rollback();
                if (!policy_.exhausted(attempts)) {
                    const milliseconds delay = policy_.backoff(attempts);
                    spdlog::info("{} event=retry message_id={} lsn={} attempt={} max_attempts={} "
                                 "sqlstate={} error={} backoff_ms={}",
                                 log_, rec.message_id, lsn(p.lsn), attempts, policy_.max_attempts,
                                 o.sqlstate, logq(o.error), delay.count());
                    rec.status = DeliveryStatus::Retrying;
                    ++m_.retried;
                    write_state({rec}, false);
                    sleep_interruptible(delay, true);
                    continue;
                }
                apply_.begin_and_apply({});  // a transaction for the dead letter alone
            }
            DeadLetter d;
            d.message_id = p.msg ? std::optional<std::string>(id) : o.message_id;
            d.source_lsn = p.lsn;
            d.decoded = p.msg ? &*p.msg : nullptr;
            d.payload = p.payload;
            d.sqlstate = o.sqlstate;
            d.error = o.error;
            d.attempts = attempts;
            d.first_failed_unix_us = first_failed;
            apply_.commit({d}, p.lsn);
            rec.status = DeliveryStatus::Dead;
            ++m_.dead_lettered;
            if (rejected_sqlstate(o.sqlstate))
                ++m_.rejected;
            ++m_.batches;
            m_.messages_applied(p.msg ? p.msg->emit_time : 0, p.lsn);
            spdlog::warn("{} event=dead_lettered message_id={} lsn={} sqlstate={} attempts={} "
                         "class={} error={}",
                         log_, d.message_id.value_or("-"), lsn(p.lsn), o.sqlstate, attempts,
                         to_string(cls), logq(o.error));
            after_commit({rec}, p.lsn);
            break;
        }
    }
    batch_.clear();
    m_.queue_drained();
}

void DatabaseWorker::write_state(const std::vector<DeliveryRecord>& records, bool sync)
{
    auto last_log = Clock::time_point{};
    for (;;) {
        try {
            store_.record(scope_, records, sync);
            if (state_broken_) {
                state_broken_ = false;
                spdlog::warn("{} event=state_recovered action=\"confirming and applying again\"", log_);
            }
            return;
        } catch (const StateError& e) {
            state_broken_ = true;
            if (Clock::now() - last_log >= milliseconds(5000)) {
                spdlog::critical("{} event=state_write_failed error={} action=\"not confirming "
                                 "and not applying until the RocksDB write succeeds; retrying\"",
                                 log_, logq(e.what()));
                last_log = Clock::now();
            }
            sleep_interruptible(milliseconds(1000), true);
        }
    }
}

Lsn DatabaseWorker::flush_position() const
{
    if (state_broken_)
        return reported_flush_;
    Lsn safe;
    if (durable_ >= need_durable_) {
        safe = last_handled_;
        if (batch_.empty())
            safe = std::max(safe, keepalive_walend_);
    } else {
        safe = durable_;
    }
    return std::max(safe, reported_flush_);
}

void DatabaseWorker::send_status(bool query_durable)
{
    if (query_durable && !state_broken_ && !cfg_.synchronous_commit && durable_ < need_durable_)
        durable_ = std::max(durable_, apply_.origin_progress(true).value_or(0));
    const Lsn flush = flush_position();
    if (flush > reported_flush_)
        ATX_FAULT_POINT("before_confirm");
    stream_.send_status(std::max(received_, flush), flush, flush);
    if (flush != reported_flush_)
        spdlog::trace("{} event=confirmed flush={} durable={} received={}", log_, lsn(flush),
                      lsn(durable_), lsn(received_));
    reported_flush_ = flush;
    m_.confirmed_lsn = flush;
    m_.received_lsn = received_;
    next_status_ = Clock::now() + milliseconds(cfg_.status_interval_ms);
}

bool DatabaseWorker::idle_and_confirmed()
{
    if (!batch_.empty() || Clock::now() - last_data_ < milliseconds(cfg_.idle_exit_ms))
        return false;
    if (durable_ < need_durable_ || reported_flush_ < last_handled_) {
        send_status(true);
        return durable_ >= need_durable_ && reported_flush_ >= last_handled_;
    }
    return true;
}

}  // namespace atx::applier
