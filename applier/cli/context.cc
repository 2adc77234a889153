// See context.h.
#include "context.h"

#include "text.h"

#include <fcntl.h>
#include <pwd.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <iostream>

namespace atx::applier::cli {

std::optional<std::string> Db::slot()
{
    if (!slot_)
        slot_ = try_scalar(*conn, "SELECT atx.slot_name()::pg_catalog.text");
    return *slot_;
}

namespace {

// What a statement the server runs for us says (a retried message's NOTICE or WARNING) is user
// text: escaped and bounded like everything else we print, never written raw.
void on_notice(void*, const PGresult* r)
{
    const char* sev = PQresultErrorField(r, PG_DIAG_SEVERITY);
    const char* msg = PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY);
    std::cerr << (sev ? sev : "NOTICE") << ": " << printable(msg ? msg : "", 500) << "\n";
}

}  // namespace

Db Context::connect(const std::string& dbname) const
{
    Db d;
    d.conn = std::make_unique<PgConn>();
    // client_encoding: what the server sends is UTF-8 whatever the database's encoding, so that
    // printable() and the JSON output see valid text.
    std::vector<std::pair<std::string, std::string>> over = {{"application_name", "atx-applier cli"},
                                                             {"client_encoding", "UTF8"}};
    if (!dbname.empty())
        over.emplace_back("dbname", dbname);
    d.conn->connect(opt.conninfo, over);
    PQsetNoticeReceiver(d.conn->get(), on_notice, nullptr);
    PgResult r = d.conn->exec(
        "SELECT pg_catalog.current_database()::pg_catalog.text, d.oid::pg_catalog.text "
        "FROM pg_catalog.pg_database d WHERE d.datname OPERATOR(pg_catalog.=) pg_catalog.current_database()");
    d.name = field(r.get(), 0, 0).value_or(dbname);
    d.oid = field(r.get(), 0, 1).value_or("0");
    return d;
}

std::vector<Db> Context::connect_all() const
{
    std::vector<Db> dbs;
    for (const auto& name : db_names())
        dbs.push_back(connect(name));
    return dbs;
}

void Context::print(const json& j, const std::string& human) const
{
    if (opt.json_out)
        std::cout << j.dump(2, ' ', false, json::error_handler_t::replace) << "\n";
    else
        std::cout << human;
}

std::optional<std::string> try_scalar(PgConn& conn, const std::string& sql, const std::vector<TextParam>& params)
{
    try {
        return conn.scalar(sql, params);
    } catch (const PgError& e) {
        if (e.connection_lost)
            throw;
        return std::nullopt;
    }
}

json jstr(const std::optional<std::string>& v) { return v ? json(*v) : json(nullptr); }

std::string iso_time(int64_t unix_us)
{
    if (unix_us <= 0)
        return "-";
    const time_t t = static_cast<time_t>(unix_us / 1000000);
    struct tm tm {};
    gmtime_r(&t, &tm);
    char b[40];
    std::strftime(b, sizeof b, "%Y-%m-%dT%H:%M:%SZ", &tm);
    return b;
}

int64_t now_us()
{
    return std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::system_clock::now().time_since_epoch())
        .count();
}

json record_json(const DeliveryRecord& r)
{
    return json{{"message_id", r.message_id},
                {"key", r.key.empty() ? json(nullptr) : json(r.key)},
                {"source_lsn", format_lsn(r.source_lsn)},
                {"status", to_string(r.status)},
                {"attempts", r.attempts},
                {"last_sqlstate", r.last_sqlstate.empty() ? json(nullptr) : json(r.last_sqlstate)},
                {"last_error", r.last_error.empty() ? json(nullptr) : json(r.last_error)},
                {"updated_at", iso_time(r.updated_at_us)}};
}

std::string os_user()
{
    if (const struct passwd* pw = getpwuid(getuid()))
        return pw->pw_name;
    return std::to_string(getuid());
}

std::string shown(const json& v, size_t max_bytes)
{
    if (v.is_null())
        return "-";
    if (v.is_string())
        return printable(v.get<std::string>(), max_bytes);
    return printable(v.dump(), max_bytes);
}

std::string audit(const Context& c, json entry)
{
    if (c.opt.state_dir.empty())
        return "";
    const std::string path = c.opt.state_dir + "/operator-audit.jsonl";
    entry["time"] = iso_time(now_us());
    entry["os_user"] = os_user();
    const std::string line = entry.dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
    const int fd = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0 || ::write(fd, line.data(), line.size()) != static_cast<ssize_t>(line.size()) || ::fsync(fd) != 0) {
        std::fprintf(stderr, "atx-applier: warning: cannot write the audit file %s: %s\n", printable(path).c_str(),
                     std::strerror(errno));
        if (fd >= 0)
            ::close(fd);
        return "";
    }
    ::close(fd);
    return path;
}

void server_log(PgConn& conn, const std::string& text)
{
    // RAISE's format string is a constant; the text travels as a bound parameter through
    // set_config (a DO block takes none), so no quoting of the text is involved.
    try {
        conn.exec("SELECT pg_catalog.set_config('atx_cli.audit', $1, false)", {printable(text, 100000)});
        conn.exec("DO $atx$ BEGIN RAISE LOG '%', pg_catalog.current_setting('atx_cli.audit'); END $atx$", {},
                  PGRES_COMMAND_OK);
        conn.exec("SELECT pg_catalog.set_config('atx_cli.audit', '', false)");
    } catch (const PgError& e) {
        if (e.connection_lost)
            throw;
        std::fprintf(stderr, "atx-applier: warning: cannot write to the server log: %s\n", printable(e.what()).c_str());
    }
}

}  // namespace atx::applier::cli
