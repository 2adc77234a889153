// check: is the server set up for the applier, and is the applier's role no more than it needs?
//
// Run it with the daemon's config file: it connects as the applier's login role and checks that
// role. "fail" is a setup that does not work or a role that can do more than it must (exit 2);
// "warn" is something that works but deserves a look.
//
// --before-upgrade, before pg_upgrade (docs/upgrade.md): also fails while the slot holds messages
// that were not applied. pg_upgrade leaves logical slots behind when the old cluster is older
// than 17, and refuses a slot that has not consumed all WAL from 17 on; either way the messages
// must be drained first. The slot is peeked (nothing consumed) and the messages found are asked
// about with atx.unapplied, as the applier would.
#include <CLI/CLI.hpp>

#include "apply_session.h"  // pg_array_literal
#include "commands.h"
#include "version.h"

namespace atx::applier::cli {

namespace {
bool g_before_upgrade = false;  // one command per process
}  // namespace

void define_check(CLI::App& app, Options&)
{
    app.add_flag("--before-upgrade", g_before_upgrade,
                 "also fail while the slot holds messages not yet applied (run it with the applier stopped, "
                 "before pg_upgrade: docs/upgrade.md)");
}

namespace {

// Functions the applier calls, each needing EXECUTE.
const char* const kNeededFunctions[] = {
    "atx.apply_batch(pg_catalog.pg_lsn[], integer[], timestamp with time zone[], integer, integer, boolean, text, "
    "integer)",
    "atx.park(pg_catalog.pg_lsn[])",
    "atx.dead_letter_message(pg_catalog.pg_lsn, text, integer, timestamp with time zone)",
    "atx.apply_activity()",
    "atx.terminate_overdue(integer, pg_catalog.pg_lsn)",
    "atx.unapplied(pg_catalog.pg_lsn[])",
    "atx.prune()",
    "atx.wake(uuid[])",
    "atx.ensure_slot()",
};

struct Checks {
    json list = json::array();
    std::string human;
    bool bad = false;

    void add(const std::string& what, const std::string& level, const std::string& detail)
    {
        list.push_back({{"check", what}, {"result", level}, {"detail", detail}});
        if (level == "fail")
            bad = true;
        human += "  " +
                 std::string(level == "ok"     ? "ok  "
                             : level == "warn" ? "WARN"
                                               : "FAIL") +
                 "  " + printable(what, 200) + ": " + printable(detail, 1000) + "\n";
    }
};

bool is_true(const std::optional<std::string>& v) { return v && (*v == "t" || *v == "true"); }

void check_server(PgConn& conn, Checks& ck)
{
    const std::string wal_level = conn.scalar("SELECT pg_catalog.current_setting('wal_level')").value_or("");
    ck.add("wal_level", wal_level == "logical" ? "ok" : "fail",
           wal_level +
               (wal_level == "logical" ? "" : " (needs logical: ALTER SYSTEM SET wal_level = logical; restart)"));
    const auto slots = conn.scalar("SELECT pg_catalog.current_setting('max_replication_slots')").value_or("0");
    const auto senders = conn.scalar("SELECT pg_catalog.current_setting('max_wal_senders')").value_or("0");
    ck.add("max_replication_slots / max_wal_senders", slots != "0" && senders != "0" ? "ok" : "fail",
           slots + " / " + senders);
}

// A superuser-only parameter (output_plugin_libraries, shared_preload_libraries): nullopt with
// *hidden set when this role may not read it (it needs pg_read_all_settings), nullopt alone when
// the server does not have it.
std::optional<std::string> setting(PgConn& conn, const std::string& name, bool* hidden)
{
    *hidden = false;
    try {
        return conn.scalar("SELECT pg_catalog.current_setting($1, true)", {name});
    } catch (const PgError& e) {
        if (e.connection_lost || e.sqlstate != "42501")
            throw;
        *hidden = true;
        return std::nullopt;
    }
}

// After the library was loaded in this session (check_slot): a library loaded late defines no
// atx.exec_max_result_bytes, a preloaded one does, so the probe needs no privilege.
void check_libraries(Db& d, Checks& ck, bool loaded)
{
    PgConn& conn = *d.conn;
    bool hidden = false;
    const auto opl = setting(conn, "output_plugin_libraries", &hidden);
    if (hidden) {
        const auto slot = d.slot();
        const bool streams =
            slot && is_true(try_scalar(conn,
                                       "SELECT s.active::pg_catalog.text FROM pg_catalog.pg_replication_slots s "
                                       "WHERE s.slot_name OPERATOR(pg_catalog.=) $1::pg_catalog.name",
                                       {*slot}));
        ck.add("output_plugin_libraries", streams ? "ok" : "warn",
               std::string("not readable by this role (pg_read_all_settings); ") +
                   (streams ? "the slot streams, so pg_atx loads as an output plugin"
                            : "run check as a superuser to see whether it lists pg_atx"));
    } else if (opl) {
        const bool has = opl->find("pg_atx") != std::string::npos;
        ck.add("output_plugin_libraries", has ? "ok" : "fail",
               "'" + *opl + "'" + (has ? "" : " (add pg_atx: ALTER SYSTEM SET output_plugin_libraries = ..., pg_atx)"));
    } else {
        ck.add("output_plugin_libraries", "ok",
               "parameter does not exist on this server (before 15.19): nothing to do");
    }
    auto spl = setting(conn, "shared_preload_libraries", &hidden);
    bool preloaded;
    std::string shown_value;
    if (hidden && !loaded) {
        ck.add("shared_preload_libraries", "warn",
               "not readable by this role (pg_read_all_settings), and without "
               "the extension there is nothing else to tell");
        return;
    }
    if (hidden) {
        preloaded =
            try_scalar(conn, "SELECT pg_catalog.current_setting('atx.exec_max_result_bytes', true)").has_value();
        shown_value = "pg_atx " + std::string(preloaded ? "is" : "is not") + " preloaded";
    } else {
        preloaded = spl.value_or("").find("pg_atx") != std::string::npos;
        shown_value = "'" + spl.value_or("") + "'";
    }
    ck.add("shared_preload_libraries", preloaded ? "ok" : "fail",
           shown_value + (preloaded ? ""
                                    : " (without pg_atx there atx-applier cannot bound each message's time and "
                                      "does not apply, and atx_exec refuses with 55000; atx_log works. "
                                      "ALTER SYSTEM SET shared_preload_libraries = ..., pg_atx; restart)"));
}

// The login role: enough to apply, nothing more (docs/security.md).
void check_role(PgConn& conn, Checks& ck, bool have_extension)
{
    PgResult role = conn.exec(
        "SELECT r.rolsuper::pg_catalog.text, r.rolreplication::pg_catalog.text, "
        "(SELECT a.oid FROM pg_catalog.pg_roles a WHERE a.rolname OPERATOR(pg_catalog.=) 'atx_applier') IS NOT NULL "
        "AND pg_catalog.pg_has_role(CURRENT_USER, 'atx_applier', 'MEMBER'), r.rolname::pg_catalog.text "
        "FROM pg_catalog.pg_roles r WHERE r.rolname OPERATOR(pg_catalog.=) CURRENT_USER");
    const bool super = is_true(field(role.get(), 0, 0));
    const bool repl = is_true(field(role.get(), 0, 1));
    const bool member = is_true(field(role.get(), 0, 2));
    const std::string me = field(role.get(), 0, 3).value_or("?");
    ck.add("role REPLICATION", repl || super ? "ok" : "fail",
           super  ? "superuser"
           : repl ? "yes"
                  : "missing (ALTER ROLE " + me + " REPLICATION)");
    ck.add("role in atx_applier", member || super ? "ok" : "fail",
           super    ? "superuser"
           : member ? "member"
                    : "not a member (GRANT atx_applier TO " + me + ")");
    if (super) {
        ck.add("least privilege", "warn",
               "the applier's role " + me +
                   " is a superuser: it can write atx.applied and atx.dead_letter and "
                   "set up replication origins; a REPLICATION role in atx_applier is enough");
    } else {
        // What the role must not be able to do: tag WAL records as pg_atx's, or forge the records
        // the server trusts (what was applied, what is dead).
        const bool origin = is_true(
            try_scalar(conn, "SELECT pg_catalog.has_function_privilege("
                             "'pg_catalog.pg_replication_origin_session_setup(text)', 'EXECUTE')::pg_catalog.text"));
        ck.add("no replication origin setup", origin ? "fail" : "ok",
               origin ? me +
                            " can execute pg_replication_origin_session_setup (REVOKE EXECUTE ON FUNCTION "
                            "pg_catalog.pg_replication_origin_session_setup(text) FROM " +
                            me + ", and from atx_applier)"
                      : "cannot execute pg_replication_origin_session_setup");
        if (have_extension) {
            for (const char* table : {"atx.applied", "atx.dead_letter", "atx.idempotency_key", "atx.apply_horizon"}) {
                const bool writes = is_true(try_scalar(conn,
                                                       "SELECT pg_catalog.has_table_privilege($1::pg_catalog.text, "
                                                       "'INSERT, UPDATE, DELETE, TRUNCATE')::pg_catalog.text",
                                                       {std::string(table)}));
                ck.add(std::string("no writes to ") + table, writes ? "fail" : "ok",
                       writes ? me + " may write it (REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON " + table + " FROM " +
                                    me + "): only the extension's functions write it"
                              : "read-only");
            }
            std::string missing;
            for (const char* f : kNeededFunctions)
                if (!is_true(try_scalar(
                        conn,
                        "SELECT pg_catalog.has_function_privilege($1::pg_catalog.text, 'EXECUTE')::pg_catalog.text",
                        {std::string(f)})))
                    missing += (missing.empty() ? "" : ", ") + std::string(f).substr(0, std::string(f).find('('));
            ck.add("apply functions", missing.empty() ? "ok" : "fail",
                   missing.empty() ? "may execute atx.apply_batch and the others"
                                   : "may not execute " + missing + " (GRANT atx_applier TO " + me + ")");
        }
    }
    // Settings of the login role (ALTER ROLE ... SET) are in every apply session before each
    // message's own settings are applied: whatever a message does not set itself, it inherits.
    const auto settings = try_scalar(
        conn,
        "SELECT pg_catalog.array_to_string(pg_catalog.array_agg(u.c), ', ') "
        "FROM pg_catalog.pg_db_role_setting s, pg_catalog.unnest(s.setconfig) u(c) "
        "WHERE s.setrole OPERATOR(pg_catalog.=) (SELECT r.oid FROM pg_catalog.pg_roles r "
        "  WHERE r.rolname OPERATOR(pg_catalog.=) SESSION_USER) "
        "AND s.setdatabase OPERATOR(pg_catalog.=) ANY (ARRAY[0::pg_catalog.oid, (SELECT d.oid "
        "  FROM pg_catalog.pg_database d WHERE d.datname OPERATOR(pg_catalog.=) pg_catalog.current_database())])");
    ck.add("settings of the login role", settings ? "warn" : "ok",
           settings ? "ALTER ROLE ... SET " + *settings +
                          ": apply sessions start with these, and a message that does not set a parameter itself "
                          "runs with them (ALTER ROLE ... RESET)"
                    : "none (ALTER ROLE ... SET would leak into messages)");
}

// The HMAC key: empty atx.key_file means pg_atx.key in the data directory, which every base
// backup and every reader of the data directory copies.
void check_key(PgConn& conn, Checks& ck)
{
    const auto key_file = try_scalar(conn, "SELECT pg_catalog.current_setting('atx.key_file', true)");
    if (!key_file) {
        ck.add("key file", "warn", "atx.key_file is not visible (the extension's library is not loaded here)");
        return;
    }
    if (key_file->empty()) {
        ck.add("key file", "warn",
               "pg_atx.key in the data directory: base backups and replicas carry it; set atx.key_file to a path "
               "outside the data directory (the same key on every node that applies)");
        return;
    }
    if ((*key_file)[0] != '/') {
        ck.add("key file", "fail", "atx.key_file '" + *key_file + "' is not an absolute path");
        return;
    }
    // pg_stat_file needs superuser or an explicit grant; without it the file is not looked at.
    std::optional<std::string> size;
    bool looked = false;
    try {
        size = conn.scalar("SELECT (pg_catalog.pg_stat_file($1, true)).size::pg_catalog.text", {*key_file});
        looked = true;
    } catch (const PgError& e) {
        if (e.connection_lost)
            throw;
    }
    if (!looked)
        ck.add("key file", "ok", "atx.key_file = '" + *key_file + "' (not inspected: this role may not stat files)");
    else if (!size)
        ck.add("key file", "warn",
               "atx.key_file = '" + *key_file +
                   "' does not exist yet: it is created on first use; copy the same key to "
                   "every node that may apply messages");
    else if (*size != "32")
        ck.add("key file", "fail", "atx.key_file = '" + *key_file + "' is " + *size + " bytes long, not 32");
    else
        ck.add("key file", "ok", "atx.key_file = '" + *key_file + "' (32 bytes)");
}

void check_slot(Db& d, Checks& ck)
{
    const auto slot = d.slot();
    if (!slot)
        return;
    PgResult s = d.conn->exec("SELECT s.plugin::pg_catalog.text, s.wal_status, s.active::pg_catalog.text "
                              "FROM pg_catalog.pg_replication_slots s "
                              "WHERE s.slot_name OPERATOR(pg_catalog.=) $1::pg_catalog.name",
                              {*slot});
    if (PQntuples(s.get()) == 0) {
        ck.add("slot " + *slot, "warn", "missing (atx-applier creates it on start; atx_log refuses until it exists)");
        return;
    }
    const std::string plugin = field(s.get(), 0, 0).value_or("");
    const std::string ws = field(s.get(), 0, 1).value_or("");
    const bool active = field(s.get(), 0, 2).value_or("") == "true";
    ck.add("slot " + *slot + " plugin", plugin == "pg_atx" ? "ok" : "fail", plugin);
    ck.add("slot " + *slot + " wal_status",
           ws == "lost"         ? "fail"
           : ws == "unreserved" ? "warn"
                                : "ok",
           ws + (ws == "lost" ? " (invalidated: its messages are gone; drop the slot to resume)" : ""));
    ck.add("slot " + *slot + " active", active ? "ok" : "warn",
           active ? "a walsender streams it" : "no applier is streaming it");
}

// "0000000016B3E1A8" (the 8 bytes after 'M' in the binary format) -> "0/16B3E1A8".
std::string lsn_of_hex(const std::string& hex)
{
    if (hex.size() != 16)
        return "";
    const uint64_t v = std::stoull(hex, nullptr, 16);
    char buf[32];
    std::snprintf(buf, sizeof buf, "%X/%X", static_cast<unsigned>(v >> 32), static_cast<unsigned>(v & 0xffffffffu));
    return buf;
}

// What pg_upgrade would lose or refuse: messages in the slot that were not applied.
void check_upgrade(Db& d, Checks& ck)
{
    PgConn& conn = *d.conn;
    const int major =
        std::stoi(conn.scalar("SELECT pg_catalog.current_setting('server_version_num')").value_or("0")) / 10000;
    const std::string drain =
        "drain before pg_upgrade: stop the callers, run the applier once more with --once (atx-applier --config "
        "FILE --once exits when everything is applied and confirmed), then run this check again";
    const auto slot = d.slot();
    if (!slot)
        return;
    PgResult s = conn.exec("SELECT s.active::pg_catalog.text FROM pg_catalog.pg_replication_slots s "
                           "WHERE s.slot_name OPERATOR(pg_catalog.=) $1::pg_catalog.name",
                           {*slot});
    if (PQntuples(s.get()) == 0) {
        ck.add("messages waiting in the slot", "ok",
               "no slot " + *slot + " (atx_log refuses without one: nothing waits)");
    } else if (field(s.get(), 0, 0).value_or("") == "true") {
        ck.add("messages waiting in the slot", "fail",
               "an applier streams " + *slot + ": stop it (systemctl stop atx-applier), then run this check again");
    } else {
        // Peeking decodes from the slot's position to the end of the WAL and consumes nothing.
        PgResult m = conn.exec("SELECT pg_catalog.encode(pg_catalog.substr(c.data, 2, 8), 'hex') "
                               "FROM pg_catalog.pg_logical_slot_peek_binary_changes($1::pg_catalog.name, NULL, NULL) c "
                               "WHERE pg_catalog.get_byte(c.data, 0) OPERATOR(pg_catalog.=) 77",
                               {*slot});
        std::vector<std::optional<std::string>> lsns;
        for (int i = 0; i < PQntuples(m.get()); ++i)
            lsns.push_back(lsn_of_hex(field(m.get(), i, 0).value_or("")));
        const std::string unapplied =
            lsns.empty()
                ? "0"
                : conn.scalar("SELECT pg_catalog.count(*)::pg_catalog.text FROM atx.unapplied($1::pg_catalog.pg_lsn[])",
                              {pg_array_literal(lsns)})
                      .value_or("?");
        if (unapplied == "0" && (lsns.empty() || major < 17))
            ck.add("messages waiting in the slot", "ok",
                   lsns.empty() ? std::string("none")
                                : "none unapplied (" + std::to_string(lsns.size()) +
                                      " applied and not yet confirmed: pg_upgrade leaves the slot behind anyway)");
        else if (unapplied == "0")
            ck.add("messages waiting in the slot", "fail",
                   std::to_string(lsns.size()) + " message" + (lsns.size() == 1 ? "" : "s") +
                       " applied but not yet confirmed in " + *slot +
                       ": pg_upgrade refuses a slot that has not consumed all WAL; " + drain);
        else
            ck.add("messages waiting in the slot", "fail",
                   unapplied + " message" + (unapplied == "1" ? "" : "s") + " in " + *slot + " not applied yet: " +
                       (major < 17 ? "pg_upgrade from PostgreSQL " + std::to_string(major) +
                                         " does not carry logical slots, so they would be lost; "
                                   : std::string("pg_upgrade refuses a slot that has not consumed all WAL; ")) +
                       drain);
    }
    ck.add("the slot after pg_upgrade", "ok",
           major < 17 ? "left behind (PostgreSQL " + std::to_string(major) +
                            "): start atx-applier on the new cluster before callers write; it creates the slot, and "
                            "atx_log refuses (55000) until then"
                      : std::string("carried by pg_upgrade to a 17+ cluster once it has consumed all WAL; pg_atx must "
                                    "be installed there"));
    const auto key_file = try_scalar(conn, "SELECT pg_catalog.current_setting('atx.key_file', true)");
    if (key_file && key_file->empty())
        ck.add("the key after pg_upgrade", "warn",
               "pg_atx.key is in the data directory, which pg_upgrade does not copy: copy it into the new data "
               "directory (mode 0600), better set atx.key_file there to a path outside it");
    else if (key_file)
        ck.add("the key after pg_upgrade", "ok",
               "atx.key_file = '" + *key_file + "': set the same atx.key_file in the new cluster's configuration");
}

}  // namespace

int run_check(Context& c)
{
    json out = json::array();
    std::string human;
    bool bad = false;
    for (const auto& name : c.db_names()) {
        Checks ck;
        json j;
        j["database"] = name.empty() ? json(nullptr) : json(name);
        std::unique_ptr<Db> d;
        try {
            d = std::make_unique<Db>(c.connect(name));
            j["database"] = d->name;
            ck.human += "database " + printable(d->name) + ":\n";
            ck.add("connection", "ok",
                   "connected as " + d->conn->scalar("SELECT CURRENT_USER::pg_catalog.text").value_or("?") +
                       ", server " +
                       d->conn->scalar("SELECT pg_catalog.current_setting('server_version')").value_or("?"));
        } catch (const PgError& e) {
            ck.human += "database " + (name.empty() ? std::string("(default)") : printable(name)) + ":\n";
            ck.add("connection", "fail", e.what());
        }
        if (d) {
            PgConn& conn = *d->conn;
            try {
                check_server(conn, ck);
                const auto ext = conn.scalar("SELECT e.extversion FROM pg_catalog.pg_extension e "
                                             "WHERE e.extname OPERATOR(pg_catalog.=) 'pg_atx'");
                if (!ext)
                    ck.add("extension pg_atx", "fail", "not installed (CREATE EXTENSION pg_atx)");
                else if (extension_compatible(*ext))
                    ck.add("extension pg_atx", "ok", "version " + *ext);
                else
                    ck.add("extension pg_atx", "fail",
                           extension_incompatible_message(*ext, d->name) + ". " + extension_incompatible_hint(*ext));
                check_role(conn, ck, ext.has_value());
                if (ext)
                    check_slot(*d, ck);  // loads the library: its parameters are defined from here on
                check_libraries(*d, ck, ext.has_value());
                if (ext)
                    check_key(conn, ck);
                if (ext && g_before_upgrade)
                    check_upgrade(*d, ck);
            } catch (const PgError& e) {
                if (e.connection_lost)
                    throw;
                ck.add("checks", "fail", std::string("a query failed, the remaining checks were skipped: ") + e.what());
            }
        }
        human += ck.human;
        bad = bad || ck.bad;
        j["checks"] = ck.list;
        out.push_back(j);
    }
    if (!c.opt.state_dir.empty()) {
        human += "state directory " + printable(c.opt.state_dir) + ":\n";
        const bool okdir = c.state != nullptr;
        human += std::string("  ") + (okdir ? "ok  " : "WARN") +
                 "  RocksDB: " + (okdir ? "readable" : printable(c.state_why)) + "\n";
    }
    json result{{"ok", !bad}, {"databases", out}};
    c.print(result, human + (bad ? "problems found\n" : "all checks passed\n"));
    return bad ? kProblem : kOk;
}

}  // namespace atx::applier::cli
