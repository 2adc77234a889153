// Which dead letters a retry or discard argument names; see commands.h.
#include "commands.h"

namespace atx::applier::cli {

std::vector<Target> find_targets(const Context& c, std::vector<Db>& dbs, bool all)
{
    std::vector<Target> t;
    for (size_t i = 0; i < dbs.size(); ++i) {
        PgResult r = all ? dbs[i].conn->exec("SELECT l.id::pg_catalog.text FROM atx.dead_letter l ORDER BY l.id")
                         : dbs[i].conn->exec("SELECT l.id::pg_catalog.text FROM atx.dead_letter l "
                                             "WHERE l.id::pg_catalog.text OPERATOR(pg_catalog.=) $1 "
                                             "OR l.message_id::pg_catalog.text OPERATOR(pg_catalog.=) $1 ORDER BY l.id",
                                             {c.opt.target});
        for (int k = 0; k < PQntuples(r.get()); ++k)
            t.push_back({i, *field(r.get(), k, 0)});
    }
    if (!all && t.size() > 1)
        throw UsageError("'" + printable(c.opt.target, 200) +
                         "' matches dead letters in several databases; give --dbname");
    return t;
}

}  // namespace atx::applier::cli
