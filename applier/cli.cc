// Operator commands; see cli.h and docs/operations.md.
#include "cli.h"

#include <fcntl.h>
#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <cxxopts.hpp>
#include <nlohmann/json.hpp>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include "cli_state.h"
#include "config.h"
#include "pg_conn.h"
#include "replication_protocol.h"
#include "state_store.h"

namespace atx::applier {

namespace {

using json = nlohmann::ordered_json;

constexpr int kOk = 0, kUsage = 1, kProblem = 2, kNotFound = 4;

const char* const kCommands[] = {"status", "show", "dead-letters", "retry", "discard", "check"};

struct Ctx {
    std::string command;
    std::string conninfo;
    std::vector<std::string> dbs;  // empty: libpq's default database
    std::string state_dir;
    bool json_out = false;
    bool all = false;
    long limit = 100;
    std::string reason;
    std::vector<std::string> args;
    std::unique_ptr<StateReader> state;
    std::string state_why;
};

class UsageError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

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

json jstr(const std::optional<std::string>& v) { return v ? json(*v) : json(nullptr); }

// A connection to one database (name resolved with current_database()).
struct Db {
    std::string name;
    std::string oid;
    std::unique_ptr<PgConn> conn;
    std::string scope() const { return "db" + oid; }
    std::string slot() const { return "pg_atx_" + oid; }
    std::string origin() const { return "pg_atx_apply_" + oid; }
};

Db connect_db(const Ctx& c, const std::string& dbname)
{
    Db d;
    d.conn = std::make_unique<PgConn>();
    std::vector<std::pair<std::string, std::string>> over = {{"application_name", "atx-applier cli"}};
    if (!dbname.empty())
        over.emplace_back("dbname", dbname);
    d.conn->connect(c.conninfo, over);
    PgResult r = d.conn->exec("SELECT current_database(), oid::text FROM pg_database WHERE datname = current_database()");
    d.name = field(r.get(), 0, 0).value_or(dbname);
    d.oid = field(r.get(), 0, 1).value_or("0");
    return d;
}

std::vector<std::string> db_list(const Ctx& c)
{
    if (c.dbs.empty())
        return {""};
    return c.dbs;
}

// Optional single value; nullopt also when the query fails (missing privilege, no extension).
std::optional<std::string> try_scalar(PgConn& conn, const std::string& sql, const std::vector<TextParam>& params = {})
{
    try {
        return conn.scalar(sql, params);
    } catch (const PgError& e) {
        if (e.connection_lost)
            throw;
        return std::nullopt;
    }
}

void print(const Ctx& c, const json& j, const std::string& human)
{
    if (c.json_out)
        std::cout << j.dump(2) << "\n";
    else
        std::cout << human;
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

// Appends one JSON line to <state-dir>/operator-audit.jsonl and fsyncs it. Returns the path, or
// "" when there is no state dir (or it cannot be written: the reason goes to stderr).
std::string audit(const Ctx& c, json entry)
{
    if (c.state_dir.empty())
        return "";
    const std::string path = c.state_dir + "/operator-audit.jsonl";
    entry["time"] = iso_time(std::chrono::duration_cast<std::chrono::microseconds>(
                                 std::chrono::system_clock::now().time_since_epoch())
                                 .count());
    entry["os_user"] = os_user();
    const std::string line = entry.dump() + "\n";
    const int fd = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0 || ::write(fd, line.data(), line.size()) != static_cast<ssize_t>(line.size()) || ::fsync(fd) != 0) {
        std::fprintf(stderr, "atx-applier: warning: cannot write the audit file %s: %s\n", path.c_str(),
                     std::strerror(errno));
        if (fd >= 0)
            ::close(fd);
        return "";
    }
    ::close(fd);
    return path;
}

// RAISE LOG in the server log (the audit line stays on the server even without a state dir).
void server_log(PgConn& conn, const std::string& text)
{
    std::string t = text;
    for (size_t p; (p = t.find("$atx$")) != std::string::npos;)
        t.replace(p, 5, "$ atx $");
    try {
        conn.exec("DO $atx$ BEGIN RAISE LOG '%', " + sql_literal(t) + "; END $atx$", {}, PGRES_COMMAND_OK);
    } catch (const PgError& e) {
        if (e.connection_lost)
            throw;
        std::fprintf(stderr, "atx-applier: warning: cannot write to the server log: %s\n", e.what());
    }
}

// ---- status ------------------------------------------------------------------------------------

int cmd_status(Ctx& c)
{
    json out = json::array();
    std::string human;
    int rc = kOk;
    for (const auto& name : db_list(c)) {
        json j;
        j["database"] = name.empty() ? json(nullptr) : json(name);
        try {
            Db d = connect_db(c, name);
            j["database"] = d.name;
            j["oid"] = std::stoul(d.oid);
            PgResult r = d.conn->exec(
                "SELECT s.active::text, s.wal_status, s.confirmed_flush_lsn::text, "
                "CASE WHEN pg_is_in_recovery() THEN NULL ELSE "
                "(pg_current_wal_flush_lsn() - s.confirmed_flush_lsn)::bigint::text END, "
                "s.active_pid::text, "
                "(SELECT extract(epoch FROM coalesce(rp.flush_lag, '0'))::text FROM pg_stat_replication rp "
                " WHERE rp.pid = s.active_pid), "
                "(SELECT extversion FROM pg_extension WHERE extname = 'pg_atx') "
                "FROM (SELECT 1) one LEFT JOIN pg_replication_slots s ON s.slot_name = $1",
                {d.slot()});
            const bool slot_exists = field(r.get(), 0, 1).has_value();
            const bool active = field(r.get(), 0, 0).value_or("false") == "true";
            j["extension"] = jstr(field(r.get(), 0, 6));
            j["slot"] = {{"name", d.slot()},
                         {"exists", slot_exists},
                         {"active", active},
                         {"active_pid", jstr(field(r.get(), 0, 4))},
                         {"wal_status", jstr(field(r.get(), 0, 1))},
                         {"confirmed_flush_lsn", jstr(field(r.get(), 0, 2))}};
            const auto lag_b = field(r.get(), 0, 3);
            const auto lag_s = field(r.get(), 0, 5);
            j["lag_bytes"] = lag_b ? json(std::stoll(*lag_b)) : json(nullptr);
            j["flush_lag_seconds"] = lag_s ? json(std::stod(*lag_s)) : json(nullptr);
            j["streaming"] = active;
            const auto progress = try_scalar(
                *d.conn, "SELECT pg_replication_origin_progress($1, true)::text", {d.origin()});
            j["applied_upto"] = jstr(progress);
            const auto dl = try_scalar(*d.conn, "SELECT count(*)::text FROM atx.dead_letter");
            const auto dl_oldest = try_scalar(*d.conn, "SELECT min(dead_at)::text FROM atx.dead_letter");
            j["dead_letters"] = dl ? json(std::stoll(*dl)) : json(nullptr);
            j["oldest_dead_letter_at"] = jstr(dl_oldest);

            std::string local;
            if (c.state) {
                json st;
                if (auto last = c.state->last(d.scope()))
                    st["last"] = record_json(*last);
                else
                    st["last"] = nullptr;
                const int64_t now = std::chrono::duration_cast<std::chrono::microseconds>(
                                        std::chrono::system_clock::now().time_since_epoch())
                                        .count();
                const size_t n = c.state->count_since(d.scope(), now - 60000000);
                st["rate_per_second_60s"] = static_cast<double>(n) / 60.0;
                j["state"] = st;
                if (st["last"].is_null())
                    local = "  last handled:  none recorded\n";
                else
                    local = "  last handled:  " + st["last"]["message_id"].get<std::string>() + " at " +
                            st["last"]["source_lsn"].get<std::string>() + " (" +
                            st["last"]["status"].get<std::string>() + ", " +
                            st["last"]["updated_at"].get<std::string>() + ")\n";
                char rate[64];
                std::snprintf(rate, sizeof rate, "%.2f", static_cast<double>(n) / 60.0);
                local += std::string("  rate:          ") + rate + " messages/s over the last 60 s\n";
            } else if (!c.state_why.empty()) {
                j["state"] = {{"error", c.state_why}};
                local = "  local state:   " + c.state_why + "\n";
            }

            human += "database " + d.name + " (oid " + d.oid + "): " +
                     (active ? "streaming" : slot_exists ? "NOT streaming (slot inactive)" : "NO SLOT") + "\n";
            human += "  slot:          " + d.slot() +
                     (slot_exists ? " wal_status=" + field(r.get(), 0, 1).value_or("?") +
                                        " confirmed=" + field(r.get(), 0, 2).value_or("-") +
                                        (active ? " pid=" + field(r.get(), 0, 4).value_or("?") : "")
                                  : " missing") +
                     "\n";
            human += "  lag:           " + (lag_b ? *lag_b + " bytes" : std::string("unknown")) +
                     (lag_s ? ", flush lag " + *lag_s + " s" : "") + "\n";
            human += "  applied up to: " + progress.value_or("unknown (origin missing or no privilege)") +
                     " (durable origin progress)\n";
            human += local;
            human += "  dead letters:  " + dl.value_or("unknown") +
                     (dl_oldest ? " (oldest " + *dl_oldest + ")" : "") + "\n";
        } catch (const PgError& e) {
            j["error"] = e.what();
            human += "database " + (name.empty() ? std::string("(default)") : name) + ": ERROR " + e.what() + "\n";
            rc = kUsage;
        }
        out.push_back(j);
    }
    print(c, out, human);
    return rc;
}

// ---- show --------------------------------------------------------------------------------------

int cmd_show(Ctx& c)
{
    if (c.args.size() != 1)
        throw UsageError("show needs one argument: a message id, an idempotency key or a dead letter id");
    const std::string x = c.args[0];
    json out = json::array();
    std::string human;
    bool found = false;
    for (const auto& name : db_list(c)) {
        Db d = connect_db(c, name);
        json j;
        j["database"] = d.name;
        std::vector<std::string> ids;
        json dead = json::array();
        try {
            PgResult r = d.conn->exec(
                "SELECT row_to_json(x)::text, x.message_id::text FROM (SELECT id, message_id, source_lsn, "
                "caller_role, caller_xid, emitted_at, statement, params, idempotency_key, sqlstate, "
                "error, attempts, first_failed_at, dead_at FROM atx.dead_letter WHERE message_id::text = $1 "
                "OR idempotency_key = $1 OR id::text = $1 ORDER BY id) x",
                {x});
            for (int i = 0; i < PQntuples(r.get()); ++i) {
                dead.push_back(json::parse(field(r.get(), i, 0).value_or("null")));
                if (auto id = field(r.get(), i, 1))
                    ids.push_back(*id);
            }
        } catch (const PgError& e) {
            if (e.connection_lost)
                throw;
            j["dead_letter_error"] = e.what();
        }
        json keys = json::array();
        try {
            PgResult r = d.conn->exec("SELECT row_to_json(k)::text, k.message_id::text FROM atx.idempotency_key k "
                                      "WHERE key = $1 OR message_id::text = $1",
                                      {x});
            for (int i = 0; i < PQntuples(r.get()); ++i) {
                keys.push_back(json::parse(field(r.get(), i, 0).value_or("null")));
                if (auto id = field(r.get(), i, 1))
                    ids.push_back(*id);
            }
        } catch (const PgError& e) {
            if (e.connection_lost)
                throw;
            j["idempotency_key_error"] = e.what();
        }
        json local = json::array();
        if (c.state) {
            std::vector<std::string> try_ids = {x};
            if (auto k = c.state->find_key(d.scope(), x))
                try_ids.push_back(*k);
            try_ids.insert(try_ids.end(), ids.begin(), ids.end());
            std::vector<std::string> seen;
            for (const auto& id : try_ids) {
                if (std::find(seen.begin(), seen.end(), id) != seen.end())
                    continue;
                seen.push_back(id);
                if (auto rec = c.state->find_message(d.scope(), id)) {
                    json rj = record_json(*rec);
                    if (auto m = c.state->get_meta(d.scope(), "discarded:" + id))
                        rj["discarded"] = json::parse(*m, nullptr, false);
                    local.push_back(rj);
                }
            }
        }
        j["dead_letters"] = dead;
        j["idempotency_keys"] = keys;
        if (c.state)
            j["local_state"] = local;
        else
            j["local_state_error"] = c.state_why.empty() ? "no --state-dir" : c.state_why;
        const bool any = !dead.empty() || !keys.empty() || !local.empty();
        found = found || any;
        if (any || db_list(c).size() == 1) {
            out.push_back(j);
            human += "database " + d.name + ":\n";
            for (const auto& dl : dead)
                human += "  dead letter #" + dl["id"].dump() + ": message " + dl["message_id"].dump() +
                         " sqlstate " + dl["sqlstate"].dump() + " attempts " + dl["attempts"].dump() +
                         "\n    error: " + dl["error"].dump() + "\n    statement: " + dl["statement"].dump() +
                         "\n    dead since " + dl["dead_at"].dump() + "\n";
            for (const auto& k : keys)
                human += "  idempotency key " + k["key"].dump() + " applied by message " +
                         k["message_id"].dump() + " at " + k["applied_at"].dump() + "\n";
            for (const auto& l : local)
                human += "  local state: message " + l["message_id"].get<std::string>() + " " +
                         l["status"].get<std::string>() + " at " + l["source_lsn"].get<std::string>() +
                         ", attempts " + l["attempts"].dump() +
                         (l["last_sqlstate"].is_null() ? "" : ", last " + l["last_sqlstate"].get<std::string>()) +
                         ", " + l["updated_at"].get<std::string>() + "\n";
            if (!any)
                human += "  nothing found for " + x + "\n";
            if (!c.state)
                human += "  (local state not read: " + (c.state_why.empty() ? std::string("no --state-dir") : c.state_why) + ")\n";
        }
    }
    print(c, out, human);
    return found ? kOk : kNotFound;
}

// ---- dead-letters ------------------------------------------------------------------------------

int cmd_dead_letters(Ctx& c)
{
    json out = json::array();
    std::string human;
    for (const auto& name : db_list(c)) {
        Db d = connect_db(c, name);
        PgResult r = d.conn->exec(
            "SELECT row_to_json(x)::text FROM (SELECT id, message_id, source_lsn, caller_role, emitted_at, "
            "sqlstate, error, attempts, first_failed_at, dead_at, statement, idempotency_key "
            "FROM atx.dead_letter ORDER BY id LIMIT $1) x",
            {std::to_string(c.limit)});
        const int n = PQntuples(r.get());
        if (!c.json_out)
            human += "database " + d.name + ": " + std::to_string(n) + " dead letter(s)" +
                     (n == c.limit ? " (--limit reached)" : "") + "\n";
        for (int i = 0; i < n; ++i) {
            json row = json::parse(field(r.get(), i, 0).value_or("null"));
            row["database"] = d.name;
            std::string stmt = row["statement"].is_string() ? row["statement"].get<std::string>() : "";
            if (stmt.size() > 80)
                stmt = stmt.substr(0, 77) + "...";
            human += "  #" + row["id"].dump() + " " +
                     (row["message_id"].is_string() ? row["message_id"].get<std::string>() : "-") + " " +
                     row["sqlstate"].get<std::string>() + " attempts=" + row["attempts"].dump() +
                     " dead_at=" + row["dead_at"].get<std::string>() + "\n     " + stmt +
                     "\n     " + row["error"].get<std::string>() + "\n";
            out.push_back(row);
        }
    }
    print(c, out, human);
    return kOk;
}

// ---- retry / discard ---------------------------------------------------------------------------

// Dead letter ids (bigint, as text) matching an argument (id or message id) in one database.
std::vector<std::string> find_dead(Db& d, const std::string& x)
{
    PgResult r = d.conn->exec("SELECT id::text FROM atx.dead_letter WHERE id::text = $1 OR message_id::text = $1",
                              {x});
    std::vector<std::string> v;
    for (int i = 0; i < PQntuples(r.get()); ++i)
        v.push_back(*field(r.get(), i, 0));
    return v;
}

struct Target {
    size_t db;  // index into the connections
    std::string id;
};

std::vector<Db> connect_all(const Ctx& c)
{
    std::vector<Db> dbs;
    for (const auto& name : db_list(c))
        dbs.push_back(connect_db(c, name));
    return dbs;
}

std::vector<Target> targets(const Ctx& c, std::vector<Db>& dbs)
{
    std::vector<Target> t;
    for (size_t i = 0; i < dbs.size(); ++i) {
        if (c.all) {
            PgResult r = dbs[i].conn->exec("SELECT id::text FROM atx.dead_letter ORDER BY id");
            for (int k = 0; k < PQntuples(r.get()); ++k)
                t.push_back({i, *field(r.get(), k, 0)});
        } else {
            for (const auto& id : find_dead(dbs[i], c.args.at(0)))
                t.push_back({i, id});
        }
    }
    if (!c.all && t.size() > 1)
        throw UsageError("'" + c.args.at(0) + "' matches dead letters in several databases; give --dbname");
    return t;
}

json retry_one(const Ctx& c, Db& d, const std::string& id)
{
    PgConn& conn = *d.conn;
    json res{{"database", d.name}, {"id", std::stoll(id)}};
    conn.exec("BEGIN", {}, PGRES_COMMAND_OK);
    try {
        // Deleting first locks the row: a concurrent retry of the same dead letter waits here and
        // then finds nothing, so a message is never applied twice by two operators.
        PgResult del = conn.exec("DELETE FROM atx.dead_letter WHERE id = $1::bigint "
                                 "RETURNING message_id::text, encode(payload, 'hex'), attempts::text",
                                 {id});
        if (PQntuples(del.get()) == 0) {
            conn.exec("ROLLBACK", {}, PGRES_COMMAND_OK);
            res["result"] = "gone";
            res["detail"] = "no such dead letter (already retried or discarded)";
            return res;
        }
        const auto message_id = field(del.get(), 0, 0);
        res["message_id"] = jstr(message_id);
        PgResult a = conn.exec("SELECT status, sqlstate, error, command, rows::text "
                               "FROM atx.apply_message(decode($1, 'hex'))",
                               {field(del.get(), 0, 1)});
        const std::string status = field(a.get(), 0, 0).value_or("");
        res["status"] = status;
        if (status == "applied" || status == "duplicate") {
            conn.exec("COMMIT", {}, PGRES_COMMAND_OK);
            res["result"] = status;
            res["command"] = jstr(field(a.get(), 0, 3));
            res["rows"] = jstr(field(a.get(), 0, 4));
            server_log(conn, "pg_atx: atx-applier retry of dead letter " + id + " (message " +
                                 message_id.value_or("-") + ") by " + os_user() + ": " + status);
            return res;
        }
        conn.exec("ROLLBACK", {}, PGRES_COMMAND_OK);
        res["result"] = "failed";
        res["sqlstate"] = jstr(field(a.get(), 0, 1));
        res["error"] = jstr(field(a.get(), 0, 2));
        try {
            conn.exec("UPDATE atx.dead_letter SET sqlstate = $2, error = $3, attempts = attempts + 1, "
                      "dead_at = now() WHERE id = $1::bigint",
                      {id, field(a.get(), 0, 1).value_or(""), field(a.get(), 0, 2).value_or("")},
                      PGRES_COMMAND_OK);
        } catch (const PgError& e) {
            if (e.connection_lost)
                throw;
            res["update_error"] = e.what();
        }
        return res;
    } catch (const PgError& e) {
        if (!e.connection_lost)
            try {
                conn.exec("ROLLBACK", {}, PGRES_COMMAND_OK);
            } catch (const PgError&) {
            }
        res["result"] = "error";
        res["sqlstate"] = e.sqlstate;
        res["error"] = e.what();
        if (e.connection_lost)
            throw;
        return res;
    }
}

int cmd_retry(Ctx& c)
{
    if (c.all != c.args.empty() || c.args.size() > 1)
        throw UsageError("retry needs one dead letter id or message id, or --all");
    std::vector<Db> dbs = connect_all(c);
    const std::vector<Target> ts = targets(c, dbs);
    if (ts.empty() && !c.all) {
        print(c, json::array(), "no dead letter matches " + c.args[0] + "\n");
        return kNotFound;
    }
    json out = json::array();
    std::string human;
    size_t ok = 0, failed = 0, gone = 0;
    for (size_t i = 0; i < ts.size(); ++i) {
        json r = retry_one(c, dbs[ts[i].db], ts[i].id);
        const std::string result = r["result"];
        if (result == "applied" || result == "duplicate")
            ++ok;
        else if (result == "gone")
            ++gone;  // retried or discarded by someone else meanwhile
        else
            ++failed;
        json a = r;
        a["action"] = "retry";
        audit(c, a);
        std::string line = "dead letter #" + ts[i].id + " (" + dbs[ts[i].db].name + ", message " +
                           (r["message_id"].is_string() ? r["message_id"].get<std::string>() : "-") +
                           "): " + result;
        if (r.contains("sqlstate") && r["sqlstate"].is_string())
            line += " " + r["sqlstate"].get<std::string>();
        if (r.contains("error") && r["error"].is_string())
            line += ": " + r["error"].get<std::string>();
        if (ts.size() > 1)
            std::fprintf(stderr, "[%zu/%zu] %s\n", i + 1, ts.size(), line.c_str());
        human += line + "\n";
        out.push_back(r);
    }
    human += "retried " + std::to_string(ts.size()) + ": " + std::to_string(ok) + " done, " +
             std::to_string(failed) + " still failing" +
             (gone ? ", " + std::to_string(gone) + " gone meanwhile" : "") + "\n";
    print(c, out, human);
    if (failed)
        return kProblem;
    return gone && !ok && !c.all ? kNotFound : kOk;
}

int cmd_discard(Ctx& c)
{
    if (c.args.size() != 1 || c.all)
        throw UsageError("discard needs one dead letter id or message id");
    if (c.reason.empty())
        throw UsageError("discard needs --reason TEXT (kept in the audit trail)");
    std::vector<Db> dbs = connect_all(c);
    const std::vector<Target> ts = targets(c, dbs);
    if (ts.empty()) {
        print(c, json::array(), "no dead letter matches " + c.args[0] + "\n");
        return kNotFound;
    }
    Db& d = dbs[ts[0].db];
    PgConn& conn = *d.conn;
    conn.exec("BEGIN", {}, PGRES_COMMAND_OK);
    PgResult del = conn.exec("DELETE FROM atx.dead_letter d WHERE id = $1::bigint "
                             "RETURNING row_to_json(d)::text, message_id::text",
                             {ts[0].id});
    if (PQntuples(del.get()) == 0) {
        conn.exec("ROLLBACK", {}, PGRES_COMMAND_OK);
        print(c, json::array(), "dead letter #" + ts[0].id + " is gone already\n");
        return kNotFound;
    }
    const json row = json::parse(field(del.get(), 0, 0).value_or("null"));
    const std::string message_id = field(del.get(), 0, 1).value_or("");
    json entry{{"action", "discard"}, {"database", d.name}, {"id", std::stoll(ts[0].id)},
               {"message_id", message_id}, {"reason", c.reason}, {"row", row}};
    // The trail is written before the delete commits: a crash in between leaves an audit entry
    // for a row that still exists (harmless), never a deleted row without a trail.
    const std::string file = audit(c, entry);
    server_log(conn, "pg_atx: atx-applier discard of dead letter " + ts[0].id + " (message " + message_id +
                         ") by " + os_user() + ", reason: " + c.reason + "; row: " + row.dump());
    conn.exec("COMMIT", {}, PGRES_COMMAND_OK);
    json res{{"database", d.name}, {"id", std::stoll(ts[0].id)}, {"message_id", message_id},
             {"result", "discarded"}, {"reason", c.reason}, {"audit_file", file.empty() ? json(nullptr) : json(file)}};
    // RocksDB meta, when the daemon does not hold the lock.
    std::string meta = "not written: no --state-dir";
    if (!c.state_dir.empty() && !message_id.empty()) {
        struct stat sb {};
        if (::stat((c.state_dir + "/CURRENT").c_str(), &sb) == 0) {
            c.state.reset();  // release our read-only handle first
            try {
                auto store = StateStore::open(c.state_dir);
                store->put_meta(d.scope(), "discarded:" + message_id, entry.dump());
                meta = "written";
            } catch (const std::exception& e) {
                meta = std::string("not written (daemon running?): ") + e.what();
            }
        }
    }
    res["rocksdb_meta"] = meta;
    print(c, res,
          "discarded dead letter #" + ts[0].id + " (message " + message_id + ") in " + d.name +
              "\n  reason: " + c.reason + "\n  audit: server log" + (file.empty() ? "" : ", " + file) +
              "\n  RocksDB meta: " + meta + "\n");
    return kOk;
}

// ---- check -------------------------------------------------------------------------------------

int cmd_check(Ctx& c)
{
    json out = json::array();
    std::string human;
    bool bad = false;
    for (const auto& name : db_list(c)) {
        json checks = json::array();
        auto add = [&](const std::string& what, const std::string& level, const std::string& detail) {
            checks.push_back({{"check", what}, {"result", level}, {"detail", detail}});
            if (level == "fail")
                bad = true;
            human += "  " + std::string(level == "ok" ? "ok  " : level == "warn" ? "WARN" : "FAIL") + "  " +
                     what + ": " + detail + "\n";
        };
        json j;
        j["database"] = name.empty() ? json(nullptr) : json(name);
        std::unique_ptr<Db> d;
        try {
            d = std::make_unique<Db>(connect_db(c, name));
            j["database"] = d->name;
            human += "database " + d->name + ":\n";
            add("connection", "ok", "connected as " + d->conn->scalar("SELECT current_user").value_or("?") +
                                        ", server " + d->conn->scalar("SHOW server_version").value_or("?"));
        } catch (const PgError& e) {
            human += "database " + (name.empty() ? std::string("(default)") : name) + ":\n";
            add("connection", "fail", e.what());
            j["checks"] = checks;
            out.push_back(j);
            continue;
        }
        PgConn& conn = *d->conn;
        const std::string wal_level = conn.scalar("SHOW wal_level").value_or("");
        add("wal_level", wal_level == "logical" ? "ok" : "fail",
            wal_level + (wal_level == "logical" ? "" : " (needs logical: ALTER SYSTEM SET wal_level = logical; restart)"));
        const auto slots = conn.scalar("SHOW max_replication_slots").value_or("0");
        const auto senders = conn.scalar("SHOW max_wal_senders").value_or("0");
        add("max_replication_slots / max_wal_senders", slots != "0" && senders != "0" ? "ok" : "fail",
            slots + " / " + senders);
        if (const auto opl = try_scalar(conn, "SELECT setting FROM pg_settings WHERE name = 'output_plugin_libraries'")) {
            const bool has = opl->find("pg_atx") != std::string::npos;
            add("output_plugin_libraries", has ? "ok" : "fail",
                "'" + *opl + "'" + (has ? "" : " (add pg_atx: ALTER SYSTEM SET output_plugin_libraries = ..., pg_atx)"));
        } else {
            add("output_plugin_libraries", "ok", "parameter does not exist on this server (before 15.19): nothing to do");
        }
        const auto ext = conn.scalar("SELECT extversion FROM pg_extension WHERE extname = 'pg_atx'");
        add("extension pg_atx", ext ? "ok" : "fail", ext ? "version " + *ext : "not installed (CREATE EXTENSION pg_atx)");
        PgResult role = conn.exec("SELECT rolsuper::text, rolreplication::text, "
                                  "(SELECT oid FROM pg_roles WHERE rolname = 'atx_applier') IS NOT NULL "
                                  "AND pg_has_role(current_user, 'atx_applier', 'MEMBER') "
                                  "FROM pg_roles WHERE rolname = current_user");
        const bool super = field(role.get(), 0, 0).value_or("") == "true";
        const bool repl = field(role.get(), 0, 1).value_or("") == "true";
        const bool member = field(role.get(), 0, 2).value_or("") == "t" || field(role.get(), 0, 2).value_or("") == "true";
        add("role REPLICATION", repl || super ? "ok" : "fail",
            super ? "superuser" : repl ? "yes" : "missing (ALTER ROLE ... REPLICATION)");
        add("role in atx_applier", member || super ? "ok" : "fail",
            super ? "superuser" : member ? "member" : "not a member (GRANT atx_applier TO ...)");
        if (super)
            add("least privilege", "warn", "the applier's role is a superuser; a REPLICATION role in atx_applier is enough");
        PgResult slot = conn.exec("SELECT plugin::text, wal_status, active::text FROM pg_replication_slots "
                                  "WHERE slot_name = $1",
                                  {d->slot()});
        if (PQntuples(slot.get()) == 0) {
            add("slot " + d->slot(), "warn", "missing (atx-applier creates it on start; atx_log refuses until it exists)");
        } else {
            const std::string plugin = field(slot.get(), 0, 0).value_or("");
            const std::string ws = field(slot.get(), 0, 1).value_or("");
            const bool active = field(slot.get(), 0, 2).value_or("") == "true";
            add("slot " + d->slot() + " plugin", plugin == "pg_atx" ? "ok" : "fail", plugin);
            add("slot " + d->slot() + " wal_status", ws == "lost" ? "fail" : ws == "unreserved" ? "warn" : "ok",
                ws + (ws == "lost" ? " (invalidated: its messages are gone; drop the slot to resume)" : ""));
            add("slot " + d->slot() + " active", active ? "ok" : "warn",
                active ? "a walsender streams it" : "no applier is streaming it");
        }
        const auto origin = try_scalar(conn, "SELECT roident::text FROM pg_replication_origin WHERE roname = $1",
                                       {d->origin()});
        add("origin " + d->origin(), origin ? "ok" : "warn",
            origin ? "exists (id " + *origin + ")" : "missing (atx-applier creates it on start)");
        j["checks"] = checks;
        out.push_back(j);
    }
    if (!c.state_dir.empty()) {
        human += "state directory " + c.state_dir + ":\n";
        const bool okdir = c.state != nullptr;
        human += std::string("  ") + (okdir ? "ok  " : "WARN") + "  RocksDB: " +
                 (okdir ? "readable" : c.state_why) + "\n";
    }
    json result{{"ok", !bad}, {"databases", out}};
    print(c, result, human + (bad ? "problems found\n" : "all checks passed\n"));
    return bad ? kProblem : kOk;
}

// ---- argument parsing --------------------------------------------------------------------------

std::string usage()
{
    return "Usage: atx-applier <command> [options]\n"
           "  status                               per database: streaming, lag, last applied, rate, dead letters\n"
           "  show <message-id|key|id>             delivery state of a message (RocksDB and server)\n"
           "  dead-letters [--limit N]             list atx.dead_letter\n"
           "  retry <id|message-id> | retry --all  apply dead letters again (exactly once)\n"
           "  discard <id|message-id> --reason T   delete a dead letter, keeping an audit trail\n"
           "  check                                verify the server setup\n"
           "Options: --conninfo C, --dbname D (repeatable), --state-dir DIR, --config FILE (the daemon's),\n"
           "         --json, --limit N, --all, --reason TEXT\n"
           "Exit status: 0 ok, 1 usage or connection error, 2 check found a problem / a retry still fails,\n"
           "             4 not found.\n";
}

}  // namespace

bool is_cli_command(const char* arg)
{
    for (const char* c : kCommands)
        if (std::strcmp(arg, c) == 0)
            return true;
    return false;
}

int run_cli(int argc, char** argv)
{
    // Library logging (RocksDB's, through the state store) goes to stderr, warnings only: stdout
    // is the command's output, possibly --json for a script.
    auto err = spdlog::stderr_logger_mt("atx-applier-cli");
    err->set_level(spdlog::level::warn);
    spdlog::set_default_logger(err);
    Ctx c;
    c.command = argv[0];
    cxxopts::Options o("atx-applier " + c.command, "");
    o.add_options()
        ("conninfo", "", cxxopts::value<std::string>())
        ("dbname", "", cxxopts::value<std::vector<std::string>>())
        ("state-dir", "", cxxopts::value<std::string>())
        ("config", "", cxxopts::value<std::string>())
        ("json", "", cxxopts::value<bool>()->default_value("false"))
        ("all", "", cxxopts::value<bool>()->default_value("false"))
        ("limit", "", cxxopts::value<long>())
        ("reason", "", cxxopts::value<std::string>())
        ("h,help", "")
        ("args", "", cxxopts::value<std::vector<std::string>>());
    o.parse_positional({"args"});
    try {
        auto r = o.parse(argc, argv);
        if (r.count("help")) {
            std::cout << usage();
            return kOk;
        }
        if (r.count("config")) {
            auto file = read_config_values(r["config"].as<std::string>());
            if (auto it = file.find("conninfo"); it != file.end()) c.conninfo = it->second.front();
            if (auto it = file.find("dbname"); it != file.end()) c.dbs = it->second;
            if (auto it = file.find("state-dir"); it != file.end()) c.state_dir = it->second.front();
        }
        if (r.count("conninfo")) c.conninfo = r["conninfo"].as<std::string>();
        if (r.count("dbname")) c.dbs = r["dbname"].as<std::vector<std::string>>();
        if (r.count("state-dir")) c.state_dir = r["state-dir"].as<std::string>();
        c.json_out = r["json"].as<bool>();
        c.all = r["all"].as<bool>();
        if (r.count("limit")) c.limit = r["limit"].as<long>();
        if (r.count("reason")) c.reason = r["reason"].as<std::string>();
        if (r.count("args")) c.args = r["args"].as<std::vector<std::string>>();
    } catch (const std::exception& e) {
        std::fprintf(stderr, "atx-applier %s: %s\n%s", c.command.c_str(), e.what(), usage().c_str());
        return kUsage;
    }
    if (!c.state_dir.empty())
        c.state = StateReader::open(c.state_dir, &c.state_why);
    try {
        if (c.command == "status") return cmd_status(c);
        if (c.command == "show") return cmd_show(c);
        if (c.command == "dead-letters") return cmd_dead_letters(c);
        if (c.command == "retry") return cmd_retry(c);
        if (c.command == "discard") return cmd_discard(c);
        if (c.command == "check") return cmd_check(c);
    } catch (const UsageError& e) {
        std::fprintf(stderr, "atx-applier %s: %s\n%s", c.command.c_str(), e.what(), usage().c_str());
        return kUsage;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "atx-applier %s: %s\n", c.command.c_str(), e.what());
        return kUsage;
    }
    return kUsage;
}

}  // namespace atx::applier
