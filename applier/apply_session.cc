// The apply session: batches in one transaction through libpq pipeline mode; see apply_session.h.
#include "apply_session.h"

#include <deque>

#include <cerrno>
#include <cstring>
#include <sys/select.h>

#include <nlohmann/json.hpp>

#include "fault.h"

namespace atx::applier {

namespace {

constexpr const char* kApplyStmt = "atx_apply";
constexpr const char* kApplySql =
    "SELECT message_id, status, sqlstate, error, command, rows FROM atx.apply_message($1::bytea)";
constexpr const char* kDeadLetterSql =
    "INSERT INTO atx.dead_letter(message_id, source_lsn, caller_role, caller_role_oid, caller_xid, "
    "emitted_at, statement, params, idempotency_key, payload, sqlstate, error, attempts, "
    "first_failed_at) VALUES ($1::uuid, $2::pg_lsn, $3::name, $4::oid, $5::xid8, "
    "'2000-01-01 00:00:00+00'::timestamptz OPERATOR(pg_catalog.+) ($6::bigint OPERATOR(pg_catalog.*) "
    "interval '1 microsecond'), $7::text, "
    "$8::jsonb, $9::text, $10::bytea, $11::text, $12::text, $13::int, "
    "'1970-01-01 00:00:00+00'::timestamptz OPERATOR(pg_catalog.+) ($14::bigint OPERATOR(pg_catalog.*) "
    "interval '1 microsecond')) "
    "ON CONFLICT (message_id) DO NOTHING";
constexpr Oid kByteaOid = 17;

// One pipeline: queries are queued with send(), results read in order by finish(). Any problem
// leaves the connection unusable for further pipelines, so errors are thrown as PgError and the
// worker reconnects (or, for a statement error, the caller rolls back).
class Pipeline {
public:
    Pipeline(PgConn& c, const std::function<void()>& on_wait) : c_(c), on_wait_(on_wait)
    {
        if (PQenterPipelineMode(c_.get()) != 1)
            throw c_.error_from(nullptr, "entering pipeline mode");
    }
    ~Pipeline()
    {
        if (!done_) {
            // An exception left results unread; the connection state is unknown: drop it.
            c_.close();
        }
    }

    // Text parameters, except those listed in `binary` (0-based indexes).
    void send(const char* sql, const std::vector<std::optional<std::string_view>>& params,
              const std::vector<int>& binary = {}, const char* prepared = nullptr)
    {
        std::vector<std::string> owned;  // NUL-terminated copies of text values
        owned.reserve(params.size());
        std::vector<const char*> vals(params.size(), nullptr);
        std::vector<int> lens(params.size(), 0), fmts(params.size(), 0);
        for (int b : binary)
            fmts[static_cast<size_t>(b)] = 1;
        for (size_t i = 0; i < params.size(); ++i) {
            if (!params[i])
                continue;
            if (fmts[i] == 1) {
                vals[i] = params[i]->data();
                lens[i] = static_cast<int>(params[i]->size());
            } else {
                owned.emplace_back(*params[i]);
                vals[i] = owned.back().c_str();
            }
        }
        const int n = static_cast<int>(params.size());
        const int ok = prepared
                           ? PQsendQueryPrepared(c_.get(), prepared, n, vals.data(), lens.data(),
                                                 fmts.data(), 0)
                           : PQsendQueryParams(c_.get(), sql, n, nullptr, vals.data(), lens.data(),
                                               fmts.data(), 0);
        if (ok != 1)
            throw c_.error_from(nullptr, "sending a pipelined query");
        ++queued_;
    }
    void flush()
    {
        if (PQflush(c_.get()) < 0)
            throw c_.error_from(nullptr, "flushing the pipeline");
    }

    // Sync, read one result per query (nullptr-free), exit pipeline mode.
    std::vector<PgResult> finish()
    {
        if (PQpipelineSync(c_.get()) != 1)
            throw c_.error_from(nullptr, "pipeline sync");
        std::vector<PgResult> out;
        out.reserve(queued_);
        for (size_t i = 0; i < queued_; ++i) {
            wait_result();
            PgResult r(PQgetResult(c_.get()));
            if (!r)
                throw c_.error_from(nullptr, "reading pipeline results");
            const ExecStatusType st = PQresultStatus(r.get());
            if (st == PGRES_PIPELINE_SYNC)
                throw PgError("pipeline: sync arrived before all results", "08P01", true);
            PgResult tail(PQgetResult(c_.get()));  // end of this query's results
            if (tail)
                throw PgError("pipeline: more than one result for a query", "08P01", true);
            out.push_back(std::move(r));
        }
        wait_result();
        PgResult sync(PQgetResult(c_.get()));
        if (!sync || PQresultStatus(sync.get()) != PGRES_PIPELINE_SYNC)
            throw c_.error_from(sync.get(), "pipeline: expected the sync result");
        if (PQexitPipelineMode(c_.get()) != 1)
            throw c_.error_from(nullptr, "leaving pipeline mode");
        done_ = true;
        return out;
    }

private:
    // Blocks until PQgetResult would not block, calling on_wait_ every 200 ms meanwhile.
    void wait_result()
    {
        while (PQisBusy(c_.get())) {
            const int fd = PQsocket(c_.get());
            if (fd < 0)
                throw c_.error_from(nullptr, "waiting for results");
            fd_set rd;
            FD_ZERO(&rd);
            FD_SET(fd, &rd);
            timeval tv{0, 200 * 1000};
            const int n = select(fd + 1, &rd, nullptr, nullptr, &tv);
            if (n < 0 && errno != EINTR)
                throw PgError(std::string("select() on the apply session: ") + strerror(errno), "08006", true);
            if (n == 0 && on_wait_)
                on_wait_();
            if (n > 0 && PQconsumeInput(c_.get()) != 1)
                throw c_.error_from(nullptr, "reading results");
        }
    }

    PgConn& c_;
    const std::function<void()>& on_wait_;
    size_t queued_ = 0;
    bool done_ = false;
};

std::string to_hex(std::string_view b)
{
    static const char* hex = "0123456789abcdef";
    std::string s = "\\x";
    s.reserve(2 + b.size() * 2);
    for (unsigned char c : b) {
        s.push_back(hex[c >> 4]);
        s.push_back(hex[c & 0xf]);
    }
    return s;
}

// First result that is not OK, as a PgError (the first error, not the "aborted" ones after it).
void check_all(const PgConn& c, const std::vector<PgResult>& rs, const char* what)
{
    for (const auto& r : rs) {
        const ExecStatusType st = PQresultStatus(r.get());
        if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK && st != PGRES_PIPELINE_ABORTED)
            throw c.error_from(r.get(), what);
    }
    for (const auto& r : rs)
        if (PQresultStatus(r.get()) == PGRES_PIPELINE_ABORTED)
            throw PgError(std::string(what) + ": pipeline aborted", "", false);
}

}  // namespace

std::string params_json(const Message& m)
{
    nlohmann::json arr = nlohmann::json::array();
    for (const auto& p : m.params) {
        nlohmann::json o;
        o["type"] = p.type_name;
        o["type_oid"] = p.type_oid;
        if (p.is_null)
            o["value"] = nullptr;
        else if (p.binary) {
            o["value"] = to_hex(p.value);
            o["binary"] = true;
        } else
            o["value"] = p.value;
        arr.push_back(std::move(o));
    }
    return arr.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

void ApplySession::connect(const std::string& base_conninfo, const std::string& dbname)
{
    close();
    conn_.connect(base_conninfo, {{"dbname", dbname}, {"application_name", "atx-applier apply"}});
    std::lock_guard<std::mutex> lock(cancel_mu_);
    cancel_ = PQgetCancel(conn_.get());
}

void ApplySession::close()
{
    {
        std::lock_guard<std::mutex> lock(cancel_mu_);
        if (cancel_) {
            PQfreeCancel(cancel_);
            cancel_ = nullptr;
        }
    }
    conn_.close();
}

void ApplySession::request_cancel()
{
    std::lock_guard<std::mutex> lock(cancel_mu_);
    if (cancel_) {
        char err[256];
        PQcancel(cancel_, err, sizeof err);
    }
}

void ApplySession::setup(const SessionSettings& s, const std::string& origin)
{
    origin_ = origin;
    if (!s.synchronous_commit)
        conn_.exec("SET synchronous_commit = off", {}, PGRES_COMMAND_OK);
    conn_.exec("SET statement_timeout = " + std::to_string(s.statement_timeout_ms), {}, PGRES_COMMAND_OK);
    conn_.exec("SET application_name = 'atx-applier apply'", {}, PGRES_COMMAND_OK);
    conn_.exec("SELECT pg_replication_origin_session_setup($1)", {origin});
    const Oid types[1] = {kByteaOid};
    PgResult r(PQprepare(conn_.get(), kApplyStmt, kApplySql, 1, types));
    if (!r || PQresultStatus(r.get()) != PGRES_COMMAND_OK)
        throw conn_.error_from(r.get(), "PREPARE atx.apply_message");
}

std::optional<Lsn> ApplySession::origin_progress(bool flush)
{
    auto v = conn_.scalar("SELECT pg_replication_origin_progress($1, " +
                              std::string(flush ? "true" : "false") + ")::text",
                          {origin_});
    if (!v)
        return std::nullopt;
    auto lsn = parse_lsn(*v);
    if (!lsn)
        throw PgError("unparsable origin progress '" + *v + "'", "", false);
    return lsn;
}

std::vector<ApplyOutcome> ApplySession::begin_and_apply(const std::vector<ApplyItem>& items)
{
    std::vector<PgResult> rs;
    {
        Pipeline p(conn_, on_wait_);
        p.send("BEGIN", {});
        p.send("SELECT pg_current_xact_id()", {});
        const size_t half = items.size() / 2;
        for (size_t i = 0; i < items.size(); ++i) {
            p.send(nullptr, {items[i].payload}, {0}, kApplyStmt);
            if (i + 1 == half && items.size() > 1) {
                p.flush();
                ATX_FAULT_POINT("mid_batch");
            }
        }
        rs = p.finish();
    }
    try {
        check_all(conn_, rs, "apply batch");
    } catch (const PgError&) {
        if (conn_.connected() && PQstatus(conn_.get()) == CONNECTION_OK)
            rollback();
        throw;
    }
    std::vector<ApplyOutcome> out;
    out.reserve(items.size());
    for (size_t i = 0; i < items.size(); ++i) {
        const PGresult* r = rs[i + 2].get();
        if (PQntuples(r) != 1 || PQnfields(r) != 6) {
            rollback();
            throw PgError("atx.apply_message returned " + std::to_string(PQntuples(r)) + " rows of " +
                              std::to_string(PQnfields(r)) + " columns",
                          "", false);
        }
        ApplyOutcome o;
        o.message_id = field(r, 0, 0);
        o.status = field(r, 0, 1).value_or("");
        o.sqlstate = field(r, 0, 2).value_or("");
        o.error = field(r, 0, 3).value_or("");
        o.command = field(r, 0, 4).value_or("");
        if (auto rows = field(r, 0, 5))
            o.rows = std::strtoll(rows->c_str(), nullptr, 10);
        out.push_back(std::move(o));
    }
    return out;
}

void ApplySession::commit(const std::vector<DeadLetter>& dead, Lsn last_lsn)
{
    std::vector<PgResult> rs;
    {
        Pipeline p(conn_, on_wait_);
        for (const auto& d : dead) {
            const Message* m = d.decoded;
            std::deque<std::string> tmp;  // stable addresses for the views below
            auto keep = [&](std::string s) -> std::optional<std::string_view> {
                tmp.push_back(std::move(s));
                return std::string_view(tmp.back());
            };
            std::vector<std::optional<std::string_view>> v(14);
            if (d.message_id) v[0] = keep(*d.message_id);
            v[1] = keep(format_lsn(d.source_lsn));
            if (m) {
                v[2] = std::string_view(m->role_name);
                v[3] = keep(std::to_string(m->role_oid));
                if (m->caller_xid != 0) v[4] = keep(std::to_string(m->caller_xid));
                v[5] = keep(std::to_string(m->emit_time));
                v[6] = std::string_view(m->statement);
                v[7] = keep(params_json(*m));
                if (m->key) v[8] = std::string_view(*m->key);
            }
            v[9] = d.payload;
            v[10] = keep(d.sqlstate.empty() ? std::string("XX000") : d.sqlstate);
            v[11] = keep(d.error.empty() ? std::string("(no error text)") : d.error);
            v[12] = keep(std::to_string(d.attempts));
            v[13] = keep(std::to_string(d.first_failed_unix_us));
            p.send(kDeadLetterSql, v, {9});
        }
        const std::string lsn = format_lsn(last_lsn);
        p.send("SELECT pg_replication_origin_xact_setup($1::pg_lsn, now())", {std::string_view(lsn)});
        p.send("COMMIT", {});
        rs = p.finish();
    }
    try {
        check_all(conn_, rs, "commit batch");
    } catch (const PgError&) {
        if (conn_.connected() && PQstatus(conn_.get()) == CONNECTION_OK)
            rollback();
        throw;
    }
    const char* tag = PQcmdStatus(rs.back().get());
    if (std::string_view(tag) != "COMMIT")
        throw PgError(std::string("apply transaction did not commit (server said ") + tag + ")", "", false);
}

void ApplySession::rollback()
{
    if (!conn_.connected())
        return;
    if (PQtransactionStatus(conn_.get()) == PQTRANS_IDLE)
        return;
    conn_.exec("ROLLBACK", {}, PGRES_COMMAND_OK);
}

}  // namespace atx::applier
