// RAII libpq helpers; see pg_conn.h.
#include "pg_conn.h"

namespace atx::applier {

namespace {

std::string trim_message(const char* m)
{
    std::string s = m ? m : "";
    while (!s.empty() && (s.back() == '\n' || s.back() == ' '))
        s.pop_back();
    return s;
}

}  // namespace

void PgConn::connect(const std::string& base, const std::vector<std::pair<std::string, std::string>>& over)
{
    close();
    std::vector<const char*> keys, values;
    if (!base.empty()) {
        keys.push_back("dbname");  // expanded as a conninfo string / URI (expand_dbname)
        values.push_back(base.c_str());
    }
    for (const auto& [k, v] : over) {
        keys.push_back(k.c_str());
        values.push_back(v.c_str());
    }
    keys.push_back(nullptr);
    values.push_back(nullptr);
    conn_ = PQconnectdbParams(keys.data(), values.data(), base.empty() ? 0 : 1);
    if (!conn_)
        throw PgError("out of memory allocating a libpq connection", "", true);
    if (PQstatus(conn_) != CONNECTION_OK) {
        std::string msg = trim_message(PQerrorMessage(conn_));
        close();
        throw PgError("connection failed: " + msg, "08006", true);
    }
    // Every SQL the applier sends resolves names in pg_catalog only: a role with CREATE on a
    // schema of the default search_path (public) must not be able to capture one of our calls
    // or operators (an overload runs with the applier's identity). The statements of messages
    // get the caller's own search_path inside atx.apply_message.
    PgResult r(PQexec(conn_, "SELECT pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', false)"));
    if (!r || PQresultStatus(r.get()) != PGRES_TUPLES_OK) {
        PgError e = error_from(r.get(), "setting search_path");
        close();
        throw e;
    }
}

void PgConn::close()
{
    if (conn_) {
        PQfinish(conn_);
        conn_ = nullptr;
    }
    busy_ = false;
}

PgError PgConn::error_from(const PGresult* r, const std::string& context) const
{
    std::string state;
    std::string msg;
    if (r) {
        if (const char* s = PQresultErrorField(r, PG_DIAG_SQLSTATE))
            state = s;
        msg = trim_message(PQresultErrorMessage(r));
    }
    if (msg.empty() && conn_)
        msg = trim_message(PQerrorMessage(conn_));
    if (msg.empty() && r)  // no error at all: the statement returned something unexpected
        msg = std::string("unexpected result status ") + PQresStatus(PQresultStatus(r));
    const bool lost = !conn_ || PQstatus(conn_) == CONNECTION_BAD;
    if (state.empty() && lost)
        state = "08006";
    return PgError(context + ": " + (msg.empty() ? std::string("unknown error") : msg), state, lost);
}

PgResult PgConn::exec(const std::string& sql, const std::vector<TextParam>& params, ExecStatusType want)
{
    if (!conn_)
        throw PgError("not connected", "08003", true);
    PgResult r;
    if (params.empty()) {
        r.reset(PQexec(conn_, sql.c_str()));
    } else {
        std::vector<const char*> vals;
        for (const auto& p : params)
            vals.push_back(p ? p->c_str() : nullptr);
        r.reset(
            PQexecParams(conn_, sql.c_str(), static_cast<int>(vals.size()), nullptr, vals.data(), nullptr, nullptr, 0));
    }
    if (!r || PQresultStatus(r.get()) != want)
        throw error_from(r.get(), sql.substr(0, sql.find_first_of("\n")));
    return r;
}

void PgConn::send(const std::string& sql)
{
    if (!conn_)
        throw PgError("not connected", "08003", true);
    if (busy_)
        throw PgError("a statement is still running: " + sent_, "55000", false);
    sent_ = sql.substr(0, sql.find_first_of("\n"));
    if (PQsendQuery(conn_, sql.c_str()) != 1)
        throw error_from(nullptr, sent_);
    busy_ = true;
}

bool PgConn::poll()
{
    if (!busy_)
        return true;
    if (PQconsumeInput(conn_) != 1)
        throw error_from(nullptr, sent_);
    std::optional<PgError> failed;
    while (!PQisBusy(conn_)) {
        PgResult r(PQgetResult(conn_));
        if (!r) {
            busy_ = false;
            if (failed)
                throw *failed;
            return true;
        }
        const ExecStatusType st = PQresultStatus(r.get());
        if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK && !failed)
            failed = error_from(r.get(), sent_);
    }
    return false;
}

std::optional<std::string> PgConn::scalar(const std::string& sql, const std::vector<TextParam>& params)
{
    PgResult r = exec(sql, params);
    if (PQntuples(r.get()) == 0)
        return std::nullopt;
    return field(r.get(), 0, 0);
}

std::string sql_literal(const std::string& s)
{
    std::string out = "'";
    for (char c : s) {
        if (c == '\'')
            out += '\'';
        out += c;
    }
    out += '\'';
    return out;
}

}  // namespace atx::applier
