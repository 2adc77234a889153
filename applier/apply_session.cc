// The apply session; see apply_session.h.
#include "apply_session.h"

#include <cerrno>
#include <cstring>
#include <ctime>
#include <sys/select.h>

#include <spdlog/spdlog.h>

#include "fault.h"
#include "logging.h"
#include "message.h"

namespace atx::applier {

namespace {

constexpr const char* kApplyStmt = "atx_apply";
constexpr const char* kApplySql =
    "SELECT lsn::text, message_id::text, status, sqlstate, error, failure, command, rows::text, backend_bytes::text "
    "FROM atx.apply_batch($1::pg_catalog.pg_lsn[], $2::pg_catalog.int4[], $3::pg_catalog.timestamptz[], "
    "$4::pg_catalog.int4, $5::pg_catalog.int4, $6::pg_catalog.bool, $7::pg_catalog.text, $8::pg_catalog.int4)";

std::string iso_utc(int64_t unix_us)
{
    std::time_t secs = static_cast<std::time_t>(unix_us / 1000000);
    std::tm tm{};
    gmtime_r(&secs, &tm);
    char buf[64];
    std::snprintf(buf, sizeof buf, "%04d-%02d-%02d %02d:%02d:%02d.%06lld+00", tm.tm_year + 1900, tm.tm_mon + 1,
                  tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<long long>(unix_us % 1000000));
    return buf;
}

// Server notices (a user statement's RAISE NOTICE, a WARNING) in our log: escaped, bounded, and
// nothing more. A statement can send any notice with any SQLSTATE and text: none is taken as a
// fact about the server.
void on_notice(void*, const PGresult* r)
{
    const char* sev = PQresultErrorField(r, PG_DIAG_SEVERITY_NONLOCALIZED);
    const char* msg = PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY);
    std::string text = msg ? msg : "";
    if (text.size() > 512)
        text = text.substr(0, 512) + "...";
    spdlog::debug("event=server_notice severity={} message={}", sev ? sev : "-", logq(text));
}

// Blocks until PQgetResult would not block, or the session is abandoned.
void wait_readable(PgConn& c, const std::atomic<bool>& abandon)
{
    while (PQisBusy(c.get())) {
        if (abandon)
            throw PgError("the apply session was abandoned (the applier stops)", "", true);
        const int fd = PQsocket(c.get());
        if (fd < 0)
            throw c.error_from(nullptr, "waiting for results");
        fd_set rd;
        FD_ZERO(&rd);
        FD_SET(fd, &rd);
        timeval tv{1, 0};
        const int n = select(fd + 1, &rd, nullptr, nullptr, &tv);
        if (n < 0 && errno != EINTR)
            throw PgError(std::string("select() on the apply session: ") + strerror(errno), "08006", true);
        if (n > 0 && PQconsumeInput(c.get()) != 1)
            throw c.error_from(nullptr, "reading results");
    }
}

PgResult next_result(PgConn& c, const std::atomic<bool>& abandon)
{
    wait_readable(c, abandon);
    return PgResult(PQgetResult(c.get()));
}

}  // namespace

std::string pg_array_literal(const std::vector<std::optional<std::string>>& items)
{
    std::string s = "{";
    for (size_t i = 0; i < items.size(); ++i) {
        if (i)
            s += ',';
        if (!items[i]) {
            s += "NULL";
            continue;
        }
        s += '"';
        for (char ch : *items[i]) {
            if (ch == '"' || ch == '\\')
                s += '\\';
            s += ch;
        }
        s += '"';
    }
    return s + "}";
}

void ApplySession::connect(const std::string& base_conninfo, const std::string& dbname, const SessionSettings& s,
                           const std::string& name)
{
    close();
    settings_ = s;
    abandon_ = false;
    conn_.connect(base_conninfo, {{"dbname", dbname}, {"application_name", "atx-applier apply " + name}});
    PQsetNoticeReceiver(conn_.get(), on_notice, this);
    // statement_timeout 0: apply_batch limits each message itself (a batch may hold many).
    PgResult r = conn_.exec("SELECT pg_catalog.set_config('synchronous_commit', $1, false), "
                            "pg_catalog.set_config('lock_timeout', $2, false), "
                            "pg_catalog.set_config('statement_timeout', '0', false), "
                            "pg_catalog.set_config('client_min_messages', 'warning', false), " +
                                std::string(kServerGenerationSql),
                            {std::string(want_sync_ ? "on" : "off"), std::to_string(s.lock_timeout_ms)});
    sync_ = want_sync_;
    server_start_ = field(r.get(), 0, 4).value_or("");
    serves_.reset();
    backend_pid_ = PQbackendPID(conn_.get());
    // Parsed and planned once per session, not once per batch (a quarter of the apply backend's
    // time when batches are small).
    PgResult p(PQprepare(conn_.get(), kApplyStmt, kApplySql, 0, nullptr));
    if (!p || PQresultStatus(p.get()) != PGRES_COMMAND_OK)
        throw conn_.error_from(p.get(), "preparing the apply call");
}

void ApplySession::swap_connection(ApplySession& o)
{
    conn_.swap(o.conn_);
    std::swap(settings_, o.settings_);
    std::swap(sync_, o.sync_);
    std::swap(serves_, o.serves_);
    std::swap(server_start_, o.server_start_);
    backend_pid_ = o.backend_pid_.exchange(backend_pid_.load());
    if (conn_.connected())
        PQsetNoticeReceiver(conn_.get(), on_notice, this);
    if (o.conn_.connected())
        PQsetNoticeReceiver(o.conn_.get(), on_notice, &o);
}

void ApplySession::set_synchronous_commit()
{
    if (sync_ == want_sync_)
        return;
    conn_.exec("SELECT pg_catalog.set_config('synchronous_commit', $1, false)",
               {std::string(want_sync_ ? "on" : "off")});
    sync_ = want_sync_;
}

void ApplySession::close()
{
    conn_.close();
    backend_pid_ = 0;
    serves_.reset();
}

std::vector<ApplyResult> ApplySession::apply(const std::vector<Pending>& items, const RunAs& as, uint32_t timeout_ms)
{
    std::vector<std::optional<std::string>> lsns, attempts, first_failed;
    for (const auto& p : items) {
        lsns.push_back(format_lsn(p.start));
        attempts.push_back(std::to_string(p.attempts + 1));
        if (p.first_failed_us)
            first_failed.push_back(iso_utc(p.first_failed_us));
        else
            first_failed.push_back(std::nullopt);
    }
    set_synchronous_commit();
    const std::string a1 = pg_array_literal(lsns), a2 = pg_array_literal(attempts), a3 = pg_array_literal(first_failed);
    const std::string a4 = std::to_string(settings_.max_attempts), a5 = std::to_string(timeout_ms),
                      a8 = std::to_string(settings_.batch_budget_ms);
    const char* vals[8] = {a1.c_str(),  a2.c_str(), a3.c_str(),
                           a4.c_str(),  a5.c_str(), settings_.wake_at_commit ? "true" : "false",
                           ATX_VERSION, a8.c_str()};
    serves_ = as;

    PGconn* c = conn_.get();
    PgResult rows;
    std::optional<PgError> failed;
    // A message that runs unrestricted (its statement needed it) has the backend's prepared
    // statements dropped after it (ext/run_as_caller.cc, reset_session_state), and one may
    // DEALLOCATE them itself: the apply call is prepared again once, not failed forever.
    for (int attempt = 0; attempt < 2; ++attempt) {
        // The call and its Sync (which commits the implicit transaction) in one round trip. The
        // commit's position is not asked for: the durability poll stands for it (Progress).
        if (PQenterPipelineMode(c) != 1)
            throw conn_.error_from(nullptr, "entering pipeline mode");
        if (PQsendQueryPrepared(c, kApplyStmt, 8, vals, nullptr, nullptr, 0) != 1 || PQpipelineSync(c) != 1)
            throw conn_.error_from(nullptr, "sending a batch");
        ATX_FAULT_POINT("mid_batch");

        rows = next_result(conn_, abandon_);
        if (!rows)
            throw conn_.error_from(nullptr, "reading the batch's results");
        failed.reset();
        if (PQresultStatus(rows.get()) != PGRES_TUPLES_OK)
            failed = conn_.error_from(rows.get(), "atx.apply_batch");
        // Drain the pipeline whatever happened: the apply's end and its Sync.
        for (;;) {
            PgResult r = next_result(conn_, abandon_);
            if (!r) {
                if (PQstatus(c) == CONNECTION_BAD)
                    throw conn_.error_from(nullptr, "reading the batch's results");
                continue;  // end of the query's results
            }
            if (PQresultStatus(r.get()) == PGRES_PIPELINE_SYNC)
                break;
        }
        if (PQexitPipelineMode(c) != 1)
            throw conn_.error_from(nullptr, "leaving pipeline mode");
        // Not found: the apply call itself was never run, so sending it again is safe.
        if (attempt == 0 && failed && failed->sqlstate == "26000" && !failed->connection_lost) {
            spdlog::warn("event=apply_call_prepared_again pid={} reason=\"the backend's prepared apply call was "
                         "dropped (a message that ran unrestricted, or its DEALLOCATE)\"",
                         backend_pid_.load());
            PgResult p(PQprepare(c, kApplyStmt, kApplySql, 0, nullptr));
            if (!p || PQresultStatus(p.get()) != PGRES_COMMAND_OK)
                throw conn_.error_from(p.get(), "preparing the apply call");
            continue;
        }
        break;
    }
    if (failed)
        throw *failed;
    ATX_FAULT_POINT("after_apply_commit");

    std::vector<ApplyResult> out;
    const int n = PQntuples(rows.get());
    if (n != static_cast<int>(items.size()))
        throw PgError("atx.apply_batch returned " + std::to_string(n) + " rows for " + std::to_string(items.size()) +
                          " messages",
                      "", false);
    out.reserve(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) {
        const PGresult* r = rows.get();
        ApplyResult a;
        a.start = parse_lsn(field(r, i, 0).value_or("")).value_or(0);
        a.message_id = field(r, i, 1);
        const std::string status = field(r, i, 2).value_or("");
        const auto st = parse_apply_status(status);
        if (!st)
            throw PgError("atx.apply_batch returned unknown status '" + status + "'", "", false);
        a.status = *st;
        a.sqlstate = field(r, i, 3).value_or("");
        a.error = field(r, i, 4).value_or("");
        a.failure = field(r, i, 5).value_or("");
        a.command = field(r, i, 6).value_or("");
        if (auto v = field(r, i, 7))
            a.rows = std::strtoll(v->c_str(), nullptr, 10);
        if (auto v = field(r, i, 8))
            a.backend_bytes = std::strtoll(v->c_str(), nullptr, 10);
        if (a.start != items[static_cast<size_t>(i)].start)
            throw PgError("atx.apply_batch answered out of order", "", false);
        out.push_back(std::move(a));
    }
    return out;
}

NonatomicResult ApplySession::run_nonatomic(const Pending& p, Lsn* commit_lsn)
{
    set_synchronous_commit();
    const int64_t first = p.first_failed_us ? p.first_failed_us : unix_now_us();
    // A top-level CALL: the procedure commits before it waits, so it holds no snapshot.
    PgResult r = conn_.exec("CALL atx.run_nonatomic($1::pg_catalog.pg_lsn, $2::pg_catalog.int4, "
                            "$3::pg_catalog.timestamptz, $4::pg_catalog.int4)",
                            {format_lsn(p.start), std::to_string(p.attempts + 1), iso_utc(first),
                             std::to_string(settings_.statement_timeout_ms)});
    NonatomicResult a;
    a.status = field(r.get(), 0, 0).value_or("");
    a.sqlstate = field(r.get(), 0, 1).value_or("");
    a.error = field(r.get(), 0, 2).value_or("");
    a.command = field(r.get(), 0, 3).value_or("");
    *commit_lsn =
        parse_lsn(conn_.scalar("SELECT pg_catalog.pg_current_wal_insert_lsn()::text").value_or("")).value_or(0);
    return a;
}

bool ApplySession::dead_letter(const Pending& p, Verdict v, Lsn* commit_lsn)
{
    set_synchronous_commit();
    const int64_t first = p.first_failed_us ? p.first_failed_us : unix_now_us();
    auto id = conn_.scalar(
        "SELECT atx.dead_letter_message($1::pg_catalog.pg_lsn, $2, $3::pg_catalog.int4, "
        "$4::pg_catalog.timestamptz)::text",
        {format_lsn(p.start), std::string(verdict_name(v)), std::to_string(p.attempts + 1), iso_utc(first)});
    *commit_lsn =
        parse_lsn(conn_.scalar("SELECT pg_catalog.pg_current_wal_insert_lsn()::text").value_or("")).value_or(0);
    return id.has_value();
}

std::optional<std::string> ApplySession::registry_state(int pid, Lsn* lsn)
{
    PgResult r =
        conn_.exec("SELECT state, lsn::text FROM atx.apply_activity() WHERE pid OPERATOR(pg_catalog.=) "
                   "$1::pg_catalog.int4 ORDER BY state OPERATOR(pg_catalog.=) 'exited', exited_at DESC LIMIT 1",
                   {std::to_string(pid)});
    if (PQntuples(r.get()) == 0)
        return std::nullopt;
    *lsn = parse_lsn(field(r.get(), 0, 1).value_or("")).value_or(0);
    return field(r.get(), 0, 0);
}

}  // namespace atx::applier
