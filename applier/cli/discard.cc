// discard: delete a dead letter that must not run, keeping the whole row and the reason in an
// audit trail (server log, <state-dir>/operator-audit.jsonl, RocksDB meta when the daemon is not
// running). Final: the message stays handled ('dead') in atx.applied, so nothing runs it later.
#include <CLI/CLI.hpp>

#include <sys/stat.h>

#include "commands.h"
#include "state_store.h"

namespace atx::applier::cli {

void define_discard(CLI::App& app, Options& o)
{
    app.add_option("target", o.target, "a dead letter id or message id")->type_name("ID")->required();
    app.add_option("--reason", o.reason, "why it must not run (kept in the audit trail)")
        ->type_name("TEXT")
        ->required()
        ->check(CLI::Validator(
            [](const std::string& v) { return v.empty() ? std::string("the reason must not be empty") : ""; }, ""));
}

int run_discard(Context& c)
{
    std::vector<Db> dbs = c.connect_all();
    const std::vector<Target> ts = find_targets(c, dbs, false);
    if (ts.empty()) {
        c.print(json::array(), "no dead letter matches " + printable(c.opt.target, 200) + "\n");
        return kNotFound;
    }
    Db& d = dbs[ts[0].db];
    const std::string& id = ts[0].id;
    PgConn& conn = *d.conn;
    conn.exec("BEGIN", {}, PGRES_COMMAND_OK);
    PgResult del = conn.exec("DELETE FROM atx.dead_letter l WHERE l.id OPERATOR(pg_catalog.=) $1::pg_catalog.int8 "
                             "RETURNING pg_catalog.row_to_json(l)::pg_catalog.text, l.message_id::pg_catalog.text",
                             {id});
    if (PQntuples(del.get()) == 0) {
        conn.exec("ROLLBACK", {}, PGRES_COMMAND_OK);
        // Visible but not deleted: row-level security has no DELETE policy for this role.
        const bool visible = try_scalar(conn,
                                        "SELECT 1 FROM atx.dead_letter l WHERE l.id OPERATOR(pg_catalog.=) "
                                        "$1::pg_catalog.int8",
                                        {id})
                                 .has_value();
        if (visible)
            throw UsageError("dead letter #" + id +
                             " was not deleted: row-level security on atx.dead_letter lets this role read it but "
                             "not delete it (run discard as a superuser or the extension's owner)");
        c.print(json::array(), "dead letter #" + id + " is gone already\n");
        return kNotFound;
    }
    const json row = json::parse(field(del.get(), 0, 0).value_or("null"), nullptr, false);
    const std::string message_id = field(del.get(), 0, 1).value_or("");
    json entry{{"action", "discard"},      {"database", d.name},     {"id", std::stoll(id)},
               {"message_id", message_id}, {"reason", c.opt.reason}, {"row", row}};
    // The trail is written before the delete commits: a crash in between leaves an audit entry
    // for a row that still exists (harmless), never a deleted row without a trail.
    const std::string file = audit(c, entry);
    server_log(conn, "pg_atx: atx-applier discard of dead letter " + id + " (message " + message_id + ") by OS user " +
                         os_user() + ", reason: " + c.opt.reason +
                         "; row: " + row.dump(-1, ' ', false, json::error_handler_t::replace));
    conn.exec("COMMIT", {}, PGRES_COMMAND_OK);
    json res{{"database", d.name},       {"id", std::stoll(id)},
             {"message_id", message_id}, {"result", "discarded"},
             {"reason", c.opt.reason},   {"audit_file", file.empty() ? json(nullptr) : json(file)}};
    // RocksDB meta, when the daemon does not hold the lock.
    std::string meta = "not written: no --state-dir";
    if (!c.opt.state_dir.empty() && !message_id.empty()) {
        struct stat sb {};
        if (::stat((c.opt.state_dir + "/CURRENT").c_str(), &sb) == 0) {
            c.state.reset();  // release our read-only handle first
            try {
                auto store = StateStore::open(c.opt.state_dir);
                store->put_meta(d.scope(), "discarded:" + message_id,
                                entry.dump(-1, ' ', false, json::error_handler_t::replace));
                meta = "written";
            } catch (const std::exception& e) {
                meta = std::string("not written (daemon running?): ") + e.what();
            }
        }
    }
    res["rocksdb_meta"] = meta;
    c.print(res, "discarded dead letter #" + id + " (message " + message_id + ") in " + printable(d.name) +
                     "\n  reason: " + printable(c.opt.reason, 500) + "\n  audit: server log" +
                     (file.empty() ? "" : ", " + printable(file)) + "\n  RocksDB meta: " + printable(meta) + "\n");
    return kOk;
}

}  // namespace atx::applier::cli
