// dead-letter: finalize one message without running it, by its start LSN or its message id (an
// operator's verdict: the server writes the dead letter with a fixed SQLSTATE and text, 57000; the
// reason goes to the audit trail only, never to a waiting caller). Works for any genuine message,
// whatever its parameters hold: the server never decodes a value to dead-letter it. The daemon
// then finds the message handled and passes over it.
#include <CLI/CLI.hpp>

#include "commands.h"
#include "message.h"

namespace atx::applier::cli {

void define_dead_letter(CLI::App& app, Options& o)
{
    app.add_option("target", o.target, "the start LSN of the message's WAL record (X/X), or its message id")
        ->type_name("LSN|MESSAGE-ID")
        ->required();
    app.add_option("--reason", o.reason, "why it must not run (kept in the audit trail)")
        ->type_name("TEXT")
        ->required()
        ->check(CLI::Validator(
            [](const std::string& v) { return v.empty() ? std::string("the reason must not be empty") : ""; }, ""));
}

int run_dead_letter(Context& c)
{
    std::vector<Db> dbs = c.connect_all();
    if (dbs.size() != 1)
        throw UsageError("name exactly one database (--dbname) for dead-letter");
    Db& d = dbs[0];
    std::string lsn;
    if (parse_lsn(c.opt.target)) {
        lsn = c.opt.target;
    } else if (uuid_from_string(c.opt.target)) {
        // A message the daemon received: its delivery history knows where it starts.
        std::optional<DeliveryRecord> rec;
        if (c.state)
            rec = c.state->find_message(d.scope(), c.opt.target);
        if (!rec)
            throw UsageError("message " + printable(c.opt.target, 100) + " is not in the applier's history" +
                             (c.state ? "" : " (no --state-dir)") + ": name it by its start LSN instead");
        lsn = format_lsn(rec->source_lsn);
    } else {
        throw UsageError("not an LSN (X/X) or a message id: " + printable(c.opt.target, 100));
    }
    PgConn& conn = *d.conn;
    const std::optional<std::string> id =
        conn.scalar("SELECT atx.dead_letter_message($1::pg_catalog.pg_lsn, 'operator')::pg_catalog.text", {lsn});
    json entry{{"action", "dead-letter"},
               {"database", d.name},
               {"lsn", lsn},
               {"message_id", id ? json(*id) : json(nullptr)},
               {"reason", c.opt.reason}};
    if (!id) {
        c.print(json{{"database", d.name}, {"lsn", lsn}, {"result", "handled before"}},
                "the message at " + lsn + " was handled before: nothing to do\n");
        return kNotFound;
    }
    const std::string file = audit(c, entry);
    server_log(conn, "pg_atx: atx-applier dead-letter of the message at " + lsn + " (" + *id + ") by OS user " +
                         os_user() + ", reason: " + c.opt.reason);
    c.print(json{{"database", d.name},
                 {"lsn", lsn},
                 {"message_id", *id},
                 {"result", "dead-lettered"},
                 {"reason", c.opt.reason},
                 {"audit_file", file.empty() ? json(nullptr) : json(file)}},
            "dead-lettered the message at " + lsn + " (" + *id + ") in " + printable(d.name) +
                " without running it (57000)\n  reason: " + printable(c.opt.reason, 500) + "\n  audit: server log" +
                (file.empty() ? "" : ", " + printable(file)) + "\n");
    return kOk;
}

}  // namespace atx::applier::cli
