// retry: run dead letters again through atx.retry_dead_letter, exactly once.
//
// The server function locks the dead letter, runs its message (authenticated again, as its
// caller's role), and either deletes the dead letter and records the message in atx.applied in
// the same transaction (applied, duplicate) or keeps it with the new error and one more attempt
// (failed); a dead letter another operator retried meanwhile is "gone". It is called exactly once
// per dead letter: after a lost connection the outcome is unknown and is reported as such, never
// tried again (`show` tells what happened).
#include <CLI/CLI.hpp>

#include <cstdio>

#include "commands.h"

namespace atx::applier::cli {

void define_retry(CLI::App& app, Options& o)
{
    auto* target = app.add_option("target", o.target, "a dead letter id or message id")->type_name("ID");
    app.add_flag("--all", o.all, "every dead letter, in id order, with progress on stderr")->excludes(target);
}

namespace {

json retry_one(Db& d, const std::string& id)
{
    json res{{"database", d.name}, {"id", std::stoll(id)}};
    try {
        PgResult r = d.conn->exec("SELECT r.message_id::pg_catalog.text, r.status, r.sqlstate, r.error "
                                  "FROM atx.retry_dead_letter($1::pg_catalog.int8) r",
                                  {id});
        res["message_id"] = jstr(field(r.get(), 0, 0));
        res["result"] = field(r.get(), 0, 1).value_or("unknown");
        if (res["result"] == "failed") {
            res["sqlstate"] = jstr(field(r.get(), 0, 2));
            res["error"] = jstr(field(r.get(), 0, 3));
        } else if (res["result"] == "gone") {
            res["detail"] = "no such dead letter (already retried or discarded)";
        } else if (res["result"] == "already") {
            res["detail"] = "its message was applied before: not run again; the dead letter is removed";
        }
    } catch (const PgError& e) {
        res["sqlstate"] = e.sqlstate;
        res["error"] = e.what();
        if (e.connection_lost)
            res["result"] = "unknown";  // committed or not: the server knows, we do not ask twice
        else if (e.sqlstate == "42501")
            res["result"] = "refused";
        else
            res["result"] = "error";
    }
    return res;
}

}  // namespace

int run_retry(Context& c)
{
    if (!c.opt.all && c.opt.target.empty())
        throw UsageError("retry needs one dead letter id or message id, or --all");
    std::vector<Db> dbs = c.connect_all();
    const std::vector<Target> ts = find_targets(c, dbs, c.opt.all);
    if (ts.empty() && !c.opt.all) {
        c.print(json::array(), "no dead letter matches " + printable(c.opt.target, 200) + "\n");
        return kNotFound;
    }
    json out = json::array();
    std::string human;
    size_t ok = 0, failed = 0, gone = 0, stopped = 0;
    for (size_t i = 0; i < ts.size(); ++i) {
        Db& d = dbs[ts[i].db];
        json r = retry_one(d, ts[i].id);
        const std::string result = r["result"];
        if (result == "applied" || result == "duplicate" || result == "already")
            ++ok;
        else if (result == "gone")
            ++gone;  // retried or discarded by someone else meanwhile
        else if (result == "refused" || result == "unknown")
            ++stopped;
        else
            ++failed;
        json a = r;
        a["action"] = "retry";
        audit(c, a);
        std::string line = "dead letter #" + ts[i].id + " (" + printable(d.name) + ", message " +
                           shown(r["message_id"]) + "): " + result;
        if (r.contains("sqlstate") && r["sqlstate"].is_string())
            line += " " + shown(r["sqlstate"], 10);
        if (r.contains("error") && r["error"].is_string())
            line += ": " + shown(r["error"], 500);
        if (result != "gone" && result != "unknown")
            server_log(*d.conn, "pg_atx: atx-applier retry of dead letter " + ts[i].id + " (message " +
                                    r["message_id"].dump() + ") by OS user " + os_user() + ": " + result +
                                    (r.contains("sqlstate") ? " " + r["sqlstate"].dump() : ""));
        if (ts.size() > 1)
            std::fprintf(stderr, "[%zu/%zu] %s\n", i + 1, ts.size(), line.c_str());
        human += line + "\n";
        out.push_back(r);
        if (result == "refused" || result == "unknown")
            break;  // no privilege, or no connection: the next ones would fare the same
    }
    human += "retried " + std::to_string(out.size()) + " of " + std::to_string(ts.size()) + ": " + std::to_string(ok) +
             " done, " + std::to_string(failed) + " still failing" +
             (gone ? ", " + std::to_string(gone) + " gone meanwhile" : "") + "\n";
    if (stopped)
        human += "stopped: " + shown(out.back()["result"]) +
                 (out.back()["result"] == "refused"
                      ? " (only superusers and members of atx_applier may retry)\n"
                      : " (the connection was lost: whether it applied is unknown; see `show`)\n");
    c.print(out, human);
    if (stopped)
        return kUsage;
    if (failed)
        return kProblem;
    return gone && !ok && !c.opt.all ? kNotFound : kOk;
}

}  // namespace atx::applier::cli
