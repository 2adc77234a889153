// dead-letters: atx.dead_letter, oldest first. Row-level security shows a role outside
// atx_applier its own dead letters only.
#include <CLI/CLI.hpp>

#include "commands.h"

namespace atx::applier::cli {

void define_dead_letters(CLI::App& app, Options& o)
{
    app.add_option("--limit", o.limit, "at most this many dead letters per database")
        ->type_name("N")
        ->capture_default_str()
        ->check(CLI::Range(1u, 1000000u).description(""));
}

int run_dead_letters(Context& c)
{
    json out = json::array();
    std::string human;
    for (const auto& name : c.db_names()) {
        Db d = c.connect(name);
        PgResult r = d.conn->exec(
            "SELECT pg_catalog.row_to_json(x)::pg_catalog.text FROM (SELECT l.id, l.message_id, l.source_lsn, "
            "l.caller_role, l.caller_session_user, l.emitted_at, l.sqlstate, l.error, l.detail, l.hint, l.attempts, "
            "l.first_failed_at, l.dead_at, l.statement, l.idempotency_key "
            "FROM atx.dead_letter l ORDER BY l.id LIMIT $1::pg_catalog.int8) x",
            {std::to_string(c.opt.limit)});
        const int n = PQntuples(r.get());
        human += "database " + printable(d.name) + ": " + std::to_string(n) + " dead letter(s)" +
                 (static_cast<uint32_t>(n) == c.opt.limit ? " (--limit reached)" : "") + "\n";
        for (int i = 0; i < n; ++i) {
            json row = json::parse(field(r.get(), i, 0).value_or("null"), nullptr, false);
            row["database"] = d.name;
            human += "  #" + shown(row["id"]) + " " + shown(row["message_id"]) + " " + shown(row["sqlstate"], 10) +
                     " attempts=" + shown(row["attempts"]) + " role=" + shown(row["caller_role"], 64) +
                     " dead_at=" + shown(row["dead_at"]) + "\n     " + shown(row["statement"], 120) + "\n     " +
                     shown(row["error"], 300) + "\n";
            out.push_back(row);
        }
    }
    c.print(out, human);
    return kOk;
}

}  // namespace atx::applier::cli
