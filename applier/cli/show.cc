// show: everything known about one message, on the server and in the local RocksDB history.
//
// The server is authoritative: atx.applied says whether the message was handled (applied,
// duplicate, dead), atx.dead_letter holds what could not run, atx.idempotency_key what a key
// suppressed. RocksDB adds this applier's delivery history and a discard reason.
#include <CLI/CLI.hpp>

#include <algorithm>

#include "commands.h"

namespace atx::applier::cli {

void define_show(CLI::App& app, Options& o)
{
    app.add_option("target", o.target, "a message id, an idempotency key, or a dead letter id")
        ->type_name("ID|KEY")
        ->required();
}

namespace {

// Rows as JSON objects; the second column, when present, collects message ids.
json rows(Db& d, const std::string& sql, const std::string& x, std::vector<std::string>* ids, json& j,
          const char* error_key)
{
    json out = json::array();
    try {
        PgResult r = d.conn->exec(sql, {x});
        for (int i = 0; i < PQntuples(r.get()); ++i) {
            out.push_back(json::parse(field(r.get(), i, 0).value_or("null"), nullptr, false));
            if (ids != nullptr)
                if (auto id = field(r.get(), i, 1))
                    ids->push_back(*id);
        }
    } catch (const PgError& e) {
        if (e.connection_lost)
            throw;
        j[error_key] = e.what();
    }
    return out;
}

}  // namespace

int run_show(Context& c)
{
    const std::string& x = c.opt.target;
    json out = json::array();
    std::string human;
    bool found = false;
    const size_t ndb = c.db_names().size();
    for (const auto& name : c.db_names()) {
        Db d = c.connect(name);
        json j;
        j["database"] = d.name;
        std::vector<std::string> ids;
        json dead = rows(d,
                         "SELECT pg_catalog.row_to_json(x)::pg_catalog.text, x.message_id::pg_catalog.text FROM ("
                         "SELECT l.id, l.message_id, l.source_lsn, l.caller_role, l.caller_session_user, "
                         "l.caller_xid, l.emitted_at, l.statement, l.params, l.idempotency_key, l.sqlstate, "
                         "l.error, l.detail, l.hint, l.attempts, l.first_failed_at, l.dead_at "
                         "FROM atx.dead_letter l "
                         "WHERE l.message_id::pg_catalog.text OPERATOR(pg_catalog.=) $1 "
                         "OR l.idempotency_key OPERATOR(pg_catalog.=) $1 "
                         "OR l.id::pg_catalog.text OPERATOR(pg_catalog.=) $1 ORDER BY l.id) x",
                         x, &ids, j, "dead_letter_error");
        json keys = rows(d,
                         "SELECT pg_catalog.row_to_json(k)::pg_catalog.text, k.message_id::pg_catalog.text "
                         "FROM atx.idempotency_key k WHERE k.key OPERATOR(pg_catalog.=) $1 "
                         "OR k.message_id::pg_catalog.text OPERATOR(pg_catalog.=) $1",
                         x, &ids, j, "idempotency_key_error");
        if (c.state)
            if (auto k = c.state->find_key(d.scope(), x))
                ids.push_back(*k);
        ids.insert(ids.begin(), x);
        std::sort(ids.begin() + 1, ids.end());
        ids.erase(std::unique(ids.begin() + 1, ids.end()), ids.end());
        json handled = json::array();
        for (const auto& id : ids) {
            json h = rows(d,
                          "SELECT pg_catalog.row_to_json(a)::pg_catalog.text FROM atx.applied a "
                          "WHERE a.message_id::pg_catalog.text OPERATOR(pg_catalog.=) $1",
                          id, nullptr, j, "applied_error");
            for (auto& row : h)
                if (std::find(handled.begin(), handled.end(), row) == handled.end())
                    handled.push_back(row);
        }
        json local = json::array();
        if (c.state) {
            std::vector<std::string> seen;
            for (const auto& id : ids) {
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
        j["applied"] = handled;
        if (c.state)
            j["local_state"] = local;
        else
            j["local_state_error"] = c.state_why.empty() ? "no --state-dir" : c.state_why;
        const bool any = !dead.empty() || !keys.empty() || !handled.empty() || !local.empty();
        found = found || any;
        if (!any && ndb > 1)
            continue;
        out.push_back(j);
        human += "database " + printable(d.name) + ":\n";
        for (const auto& a : handled)
            human += "  server: message " + shown(a["message_id"]) + " at " + shown(a["lsn"]) + " " +
                     shown(a["status"]) + " (" + shown(a["handled_at"]) + ")\n";
        for (const auto& dl : dead) {
            human += "  dead letter #" + shown(dl["id"]) + ": message " + shown(dl["message_id"]) + " of role " +
                     shown(dl["caller_role"], 200) + ", sqlstate " + shown(dl["sqlstate"], 10) + ", attempts " +
                     shown(dl["attempts"]) + "\n    error: " + shown(dl["error"]) + "\n";
            if (!dl["detail"].is_null())
                human += "    detail: " + shown(dl["detail"]) + "\n";
            if (!dl["hint"].is_null())
                human += "    hint: " + shown(dl["hint"]) + "\n";
            human += "    statement: " + shown(dl["statement"]) + "\n    dead since " + shown(dl["dead_at"]) + "\n";
        }
        for (const auto& k : keys)
            human += "  idempotency key " + shown(k["key"], 500) + " applied by message " + shown(k["message_id"]) +
                     " at " + shown(k["applied_at"]) + "\n";
        for (const auto& l : local)
            human += "  local state: message " + shown(l["message_id"]) + " " + shown(l["status"]) + " at " +
                     shown(l["source_lsn"]) + ", attempts " + shown(l["attempts"]) +
                     (l["last_sqlstate"].is_null() ? "" : ", last " + shown(l["last_sqlstate"], 10)) + ", " +
                     shown(l["updated_at"]) +
                     (l.contains("discarded") && l["discarded"].is_object()
                          ? "\n    discarded: " + shown(l["discarded"].value("reason", json(nullptr)), 500)
                          : "") +
                     "\n";
        if (!any)
            human += "  nothing found for " + printable(x, 200) + "\n";
        if (!c.state)
            human += "  (local state not read: " +
                     printable(c.state_why.empty() ? std::string("no --state-dir") : c.state_why) + ")\n";
    }
    if (!found && ndb > 1)
        human += "nothing found for " + printable(x, 200) + " in any of the databases\n";
    c.print(out, human);
    return found ? kOk : kNotFound;
}

}  // namespace atx::applier::cli
