// status: per database, is it streaming, how far is it, what is left over.
//
// Positions: the slot's confirmed_flush_lsn is where the stream resumes; atx.apply_horizon is the
// server's own record that every message before it was handled (atx.prune moves it up to the
// confirmed position and forgets older atx.applied rows).
#include <CLI/CLI.hpp>

#include <cstdio>

#include "commands.h"

namespace atx::applier::cli {

void define_status(CLI::App&, Options&) {}

namespace {

std::string local_state(Context& c, const Db& d, json& j)
{
    std::string human;
    if (c.state) {
        json st;
        if (auto last = c.state->last(d.scope()))
            st["last"] = record_json(*last);
        else
            st["last"] = nullptr;
        const size_t n = c.state->count_since(d.scope(), now_us() - 60000000);
        st["rate_per_second_60s"] = static_cast<double>(n) / 60.0;
        j["state"] = st;
        if (st["last"].is_null())
            human = "  last handled:  none recorded\n";
        else
            human = "  last handled:  " + shown(st["last"]["message_id"]) + " at " + shown(st["last"]["source_lsn"]) +
                    " (" + shown(st["last"]["status"]) + ", " + shown(st["last"]["updated_at"]) + ")\n";
        char rate[64];
        std::snprintf(rate, sizeof rate, "%.2f", static_cast<double>(n) / 60.0);
        human += std::string("  rate:          ") + rate + " messages/s over the last 60 s\n";
    } else if (!c.state_why.empty()) {
        j["state"] = {{"error", c.state_why}};
        human = "  local state:   " + printable(c.state_why) + "\n";
    }
    return human;
}

}  // namespace

int run_status(Context& c)
{
    json out = json::array();
    std::string human;
    int rc = kOk;
    for (const auto& name : c.db_names()) {
        json j;
        j["database"] = name.empty() ? json(nullptr) : json(name);
        try {
            Db d = c.connect(name);
            j["database"] = d.name;
            j["oid"] = std::stoul(d.oid);
            const auto slot = d.slot();
            PgResult r = d.conn->exec(
                "SELECT s.active::pg_catalog.text, s.wal_status, s.confirmed_flush_lsn::pg_catalog.text, "
                "CASE WHEN pg_catalog.pg_is_in_recovery() THEN NULL ELSE "
                "(pg_catalog.pg_current_wal_flush_lsn() OPERATOR(pg_catalog.-) s.confirmed_flush_lsn)"
                "::pg_catalog.int8::pg_catalog.text END, "
                "s.active_pid::pg_catalog.text, "
                "(SELECT EXTRACT(epoch FROM COALESCE(rp.flush_lag, '0'::pg_catalog.interval))::pg_catalog.text "
                " FROM pg_catalog.pg_stat_replication rp WHERE rp.pid OPERATOR(pg_catalog.=) s.active_pid), "
                "(SELECT e.extversion FROM pg_catalog.pg_extension e WHERE e.extname OPERATOR(pg_catalog.=) 'pg_atx') "
                "FROM (SELECT 1) one LEFT JOIN pg_catalog.pg_replication_slots s "
                "ON s.slot_name OPERATOR(pg_catalog.=) $1::pg_catalog.name",
                {slot});
            const bool slot_exists = field(r.get(), 0, 1).has_value();
            const bool active = field(r.get(), 0, 0).value_or("false") == "true";
            const auto confirmed = field(r.get(), 0, 2);
            j["extension"] = jstr(field(r.get(), 0, 6));
            j["slot"] = {{"name", jstr(slot)},
                         {"exists", slot_exists},
                         {"active", active},
                         {"active_pid", jstr(field(r.get(), 0, 4))},
                         {"wal_status", jstr(field(r.get(), 0, 1))},
                         {"confirmed_flush_lsn", jstr(confirmed)}};
            const auto lag_b = field(r.get(), 0, 3);
            const auto lag_s = field(r.get(), 0, 5);
            j["lag_bytes"] = lag_b ? json(std::stoll(*lag_b)) : json(nullptr);
            j["flush_lag_seconds"] = lag_s ? json(std::stod(*lag_s)) : json(nullptr);
            j["streaming"] = active;
            // atx_applier members and superusers may read it; others see "unknown".
            std::optional<std::string> horizon, horizon_at;
            try {
                PgResult h = d.conn->exec("SELECT h.lsn::pg_catalog.text, h.updated_at::pg_catalog.text "
                                          "FROM atx.apply_horizon h");
                horizon = field(h.get(), 0, 0);
                horizon_at = field(h.get(), 0, 1);
            } catch (const PgError& e) {
                if (e.connection_lost)
                    throw;
            }
            j["apply_horizon"] = {{"lsn", jstr(horizon)}, {"updated_at", jstr(horizon_at)}};
            // Row-level security: a role outside atx_applier counts only its own dead letters.
            std::optional<std::string> dl, dl_oldest;
            try {
                PgResult n = d.conn->exec("SELECT pg_catalog.count(*)::pg_catalog.text, "
                                          "pg_catalog.min(l.dead_at)::pg_catalog.text FROM atx.dead_letter l");
                dl = field(n.get(), 0, 0);
                dl_oldest = field(n.get(), 0, 1);
            } catch (const PgError& e) {
                if (e.connection_lost)
                    throw;
            }
            j["dead_letters"] = dl ? json(std::stoll(*dl)) : json(nullptr);
            j["oldest_dead_letter_at"] = jstr(dl_oldest);
            const std::string local = local_state(c, d, j);

            human += "database " + printable(d.name) + " (oid " + d.oid + "): " +
                     (active        ? "streaming"
                      : slot_exists ? "NOT streaming (slot inactive)"
                                    : "NO SLOT") +
                     "\n";
            human += "  slot:          " + printable(slot.value_or("unknown (extension missing)")) +
                     (slot_exists ? " wal_status=" + field(r.get(), 0, 1).value_or("?") +
                                        (active ? " pid=" + field(r.get(), 0, 4).value_or("?") : "")
                                  : " missing") +
                     "\n";
            human += "  confirmed:     " + confirmed.value_or("-") +
                     " (the slot's confirmed position: the stream resumes here)\n";
            human +=
                "  apply horizon: " +
                (horizon ? *horizon + " (every message before it was handled; updated " + horizon_at.value_or("-") + ")"
                         : std::string("unknown (extension missing or no privilege)")) +
                "\n";
            human += "  lag:           " + (lag_b ? *lag_b + " bytes" : std::string("unknown")) +
                     (lag_s ? ", flush lag " + *lag_s + " s" : "") + "\n";
            human += local;
            human +=
                "  dead letters:  " + dl.value_or("unknown") + (dl_oldest ? " (oldest " + *dl_oldest + ")" : "") + "\n";
        } catch (const PgError& e) {
            j["error"] = e.what();
            human += "database " + (name.empty() ? std::string("(default)") : printable(name)) + ": ERROR " +
                     printable(e.what()) + "\n";
            rc = kUsage;
        }
        out.push_back(j);
    }
    c.print(out, human);
    return rc;
}

}  // namespace atx::applier::cli
