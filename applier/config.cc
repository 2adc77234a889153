// Command line and config file parsing; see config.h.
#include "config.h"

#include <cxxopts.hpp>

#include <algorithm>
#include <fstream>
#include <map>
#include <set>

#include "logging.h"

namespace atx::applier {

namespace {

using FileValues = std::map<std::string, std::vector<std::string>>;

std::string trim(const std::string& s)
{
    const char* ws = " \t\r\n";
    const size_t b = s.find_first_not_of(ws);
    if (b == std::string::npos)
        return "";
    const size_t e = s.find_last_not_of(ws);
    return s.substr(b, e - b + 1);
}

const std::set<std::string>& file_keys()
{
    static const std::set<std::string> keys = {
        "conninfo", "dbname", "state-dir", "log-file", "log-level", "batch-size", "batch-delay-ms",
        "statement-timeout-ms", "max-attempts", "retry-base-ms", "retry-cap-ms",
        "status-interval-ms", "synchronous-commit", "pid-file", "once", "idle-exit-ms",
        "http-listen", "ready-max-lag-seconds", "monitor-interval-ms", "lock-timeout-ms", "apply-sessions",
        "max-sessions-per-role", "nested-sessions", "max-retry-seconds", "max-backend-losses",
        "prune-interval-ms", "durability", "state-retention-days", "state-retention-records",
        "state-retention-interval-ms"};
    return keys;
}

FileValues read_config_file(const std::string& path)
{
    std::ifstream in(path);
    if (!in)
        throw ConfigError("cannot read config file " + path);
    FileValues values;
    std::string line;
    int lineno = 0;
    while (std::getline(in, line)) {
        ++lineno;
        const std::string t = trim(line);
        if (t.empty() || t[0] == '#')
            continue;
        const size_t eq = t.find('=');
        if (eq == std::string::npos)
            throw ConfigError(path + ":" + std::to_string(lineno) + ": expected 'name = value'");
        std::string name = trim(t.substr(0, eq));
        std::string value = trim(t.substr(eq + 1));
        if (value.size() >= 2 && ((value.front() == '"' && value.back() == '"') ||
                                  (value.front() == '\'' && value.back() == '\'')))
            value = value.substr(1, value.size() - 2);
        if (!file_keys().count(name))
            throw ConfigError(path + ":" + std::to_string(lineno) + ": unknown setting '" + name + "'");
        if (name != "dbname" && values.count(name))
            throw ConfigError(path + ":" + std::to_string(lineno) + ": '" + name + "' set twice");
        values[name].push_back(value);
    }
    return values;
}

uint32_t to_u32(const std::string& name, const std::string& v, uint32_t min, uint32_t max)
{
    size_t pos = 0;
    unsigned long long n;
    try {
        n = std::stoull(v, &pos, 10);
    } catch (const std::exception&) {
        throw ConfigError(name + ": '" + v + "' is not a number");
    }
    if (pos != v.size() || v.empty() || v[0] == '-')
        throw ConfigError(name + ": '" + v + "' is not a number");
    if (n < min || n > max)
        throw ConfigError(name + ": " + v + " is out of range [" + std::to_string(min) + ", " +
                          std::to_string(max) + "]");
    return static_cast<uint32_t>(n);
}

bool to_bool(const std::string& name, const std::string& v)
{
    if (v == "true" || v == "on" || v == "1" || v == "yes")
        return true;
    if (v == "false" || v == "off" || v == "0" || v == "no")
        return false;
    throw ConfigError(name + ": '" + v + "' is not a boolean");
}

cxxopts::Options make_options()
{
    cxxopts::Options o("atx-applier",
                       "Applies pg_atx autonomous statements, exactly once, from each database's "
                       "pg_atx logical slot.");
    o.custom_help("[OPTIONS]");
    // No cxxopts defaults: "not given" must stay visible so that the config file can fill it.
    o.add_options()
        ("conninfo", "base libpq conninfo (dbname is added per database) (default: \"\", libpq "
                     "environment)", cxxopts::value<std::string>())
        ("dbname", "database to serve; repeat for several (required)",
         cxxopts::value<std::vector<std::string>>())
        ("state-dir", "RocksDB state directory (required)", cxxopts::value<std::string>())
        ("config", "config file of 'name = value' lines (long flag names)", cxxopts::value<std::string>())
        ("log-file", "log file, reopened on SIGHUP (default: stderr)", cxxopts::value<std::string>())
        ("log-level", "trace|debug|info|warning|error|critical|off (default: info)",
         cxxopts::value<std::string>())
        ("batch-size", "messages per apply transaction at most (default: 500)",
         cxxopts::value<std::string>())
        ("batch-delay-ms", "how long to wait for more messages when the stream is idle before "
                           "applying a partial batch; 0 applies what has arrived, and batches still form under load (default: 0)", cxxopts::value<std::string>())
        ("statement-timeout-ms", "longest run of one message; a message that runs longer is "
                                 "dead-lettered (default: 60000)", cxxopts::value<std::string>())
        ("lock-timeout-ms", "lock_timeout of the apply sessions: a longer lock wait is retried later, "
                            "freeing the session (default: 10000)", cxxopts::value<std::string>())
        ("apply-sessions", "apply sessions per database (default: 4)", cxxopts::value<std::string>())
        ("max-sessions-per-role", "apply sessions one role's messages may occupy at once (default: "
                                  "half of --apply-sessions, at least 1)", cxxopts::value<std::string>())
        ("nested-sessions", "extra sessions that serve nested atx_exec calls (default: 16)",
         cxxopts::value<std::string>())
        ("max-retry-seconds", "a message failing transiently for longer is dead-lettered (default: 300)",
         cxxopts::value<std::string>())
        ("max-backend-losses", "a message running alone when its apply backend is lost this often is "
                               "dead-lettered (default: 2)", cxxopts::value<std::string>())
        ("prune-interval-ms", "how often the server forgets handled messages the slot confirmed "
                              "(default: 5000)", cxxopts::value<std::string>())
        ("durability", "what must hold before the slot is confirmed past a message: auto (sync when "
                       "synchronous_standby_names is set, else local), local (flushed here), sync "
                       "(synchronous apply commits), standby-flush (flushed by every streaming "
                       "standby) (default: auto)", cxxopts::value<std::string>())
        ("max-attempts", "attempts for a transiently failing message before it is dead-lettered "
                         "(default: 8)", cxxopts::value<std::string>())
        ("retry-base-ms", "first retry backoff (default: 100)", cxxopts::value<std::string>())
        ("retry-cap-ms", "largest retry backoff (default: 30000)", cxxopts::value<std::string>())
        ("status-interval-ms", "standby status update interval (default: 1000)",
         cxxopts::value<std::string>())
        ("synchronous-commit", "same as --durability sync",
         cxxopts::value<bool>()->implicit_value("true"))
        ("pid-file", "write the process id here (default: none)", cxxopts::value<std::string>())
        ("once", "exit 0 when every stream has been idle for --idle-exit-ms and everything is "
                 "confirmed", cxxopts::value<bool>()->implicit_value("true"))
        ("idle-exit-ms", "idle time before --once exits (default: 2000)", cxxopts::value<std::string>())
        ("http-listen", "host:port of the /metrics, /healthz, /readyz listener, or 'off' (default: "
                        "127.0.0.1:9478; port 0 picks a free one)", cxxopts::value<std::string>())
        ("ready-max-lag-seconds", "/readyz answers 503 when a database lags more (default: 60)",
         cxxopts::value<std::string>())
        ("monitor-interval-ms", "how often the server is asked for slot status, lag in bytes and "
                                "dead letters (default: 5000)", cxxopts::value<std::string>())
        ("state-retention-days", "delivery history in the state directory older than this is deleted; "
                                 "0 keeps it by age (default: 7)", cxxopts::value<std::string>())
        ("state-retention-records", "at most this many delivery records are kept per database, the newest; "
                                    "0 sets no limit (default: 1000000)", cxxopts::value<std::string>())
        ("state-retention-interval-ms", "how often the retention sweep runs (default: 60000)",
         cxxopts::value<std::string>())
        ("version", "print the version and exit")
        ("h,help", "print this help and exit");
    return o;
}

}  // namespace

ParseOutcome parse_config(int argc, const char* const* argv)
{
    cxxopts::Options options = make_options();
    cxxopts::ParseResult cli;
    try {
        cli = options.parse(argc, argv);
    } catch (const cxxopts::exceptions::exception& e) {
        throw ConfigError(e.what());
    }
    ParseOutcome out;
    if (cli.count("help")) {
        out.action = ParseOutcome::Action::Help;
        out.text = options.help() +
                   "\nExit status: 0 clean shutdown, 1 configuration error (with --once also: a database not "
                   "ready, e.g. extension missing), 3 a slot was lost "
                   "(wal_status 'lost').\nOperator commands: atx-applier status|show|dead-letters|retry|discard|check "
                   "[options] (atx-applier status --help).\nSignals: SIGTERM/SIGINT finish the in-flight batch, "
                   "confirm and exit; SIGHUP reopens the log file and reloads log-level.\n";
        return out;
    }
    if (cli.count("version")) {
        out.action = ParseOutcome::Action::Version;
        out.text = std::string("atx-applier ") + kApplierVersion + "\n";
        return out;
    }
    if (!cli.unmatched().empty())
        throw ConfigError("unexpected argument '" + cli.unmatched().front() + "'");

    Config& c = out.config;
    FileValues file;
    if (cli.count("config")) {
        c.config_file = cli["config"].as<std::string>();
        file = read_config_file(c.config_file);
    }
    auto str = [&](const std::string& name) -> std::optional<std::string> {
        if (cli.count(name))
            return cli[name].as<std::string>();
        auto it = file.find(name);
        if (it != file.end())
            return it->second.front();
        return std::nullopt;
    };
    auto u32 = [&](const std::string& name, uint32_t& field, uint32_t min, uint32_t max) {
        if (auto v = str(name))
            field = to_u32(name, *v, min, max);
    };
    auto boolean = [&](const std::string& name, bool& field) {
        if (cli.count(name))
            field = cli[name].as<bool>();
        else if (auto it = file.find(name); it != file.end())
            field = to_bool(name, it->second.front());
    };

    if (auto v = str("conninfo")) c.conninfo = *v;
    if (cli.count("dbname"))
        c.dbnames = cli["dbname"].as<std::vector<std::string>>();
    else if (auto it = file.find("dbname"); it != file.end())
        c.dbnames = it->second;
    if (auto v = str("state-dir")) c.state_dir = *v;
    if (auto v = str("log-file")) c.log_file = *v;
    if (auto v = str("log-level")) {
        try {
            c.log_level = parse_log_level(*v);
        } catch (const std::invalid_argument& e) {
            throw ConfigError(e.what());
        }
    }
    c.log_level_from_cli = cli.count("log-level") > 0;
    u32("batch-size", c.batch_size, 1, 100000);
    u32("batch-delay-ms", c.batch_delay_ms, 0, 60000);
    u32("statement-timeout-ms", c.statement_timeout_ms, 0, INT32_MAX);
    u32("max-attempts", c.max_attempts, 1, 1000000);
    u32("lock-timeout-ms", c.lock_timeout_ms, 0, INT32_MAX);
    u32("apply-sessions", c.apply_sessions, 1, 64);
    u32("max-sessions-per-role", c.max_sessions_per_role, 0, 64);
    u32("nested-sessions", c.nested_sessions, 0, 64);
    u32("max-retry-seconds", c.max_retry_seconds, 1, 86400 * 30);
    u32("max-backend-losses", c.max_backend_losses, 1, 100);
    u32("prune-interval-ms", c.prune_interval_ms, 100, 3600000);
    if (auto v = str("durability")) {
        if (*v != "auto" && *v != "local" && *v != "sync" && *v != "standby-flush")
            throw ConfigError("durability: '" + *v + "' is not auto, local, sync or standby-flush");
        c.durability = *v;
    }
    u32("retry-base-ms", c.retry_base_ms, 0, INT32_MAX);
    u32("retry-cap-ms", c.retry_cap_ms, 0, INT32_MAX);
    u32("status-interval-ms", c.status_interval_ms, 10, 3600000);
    u32("idle-exit-ms", c.idle_exit_ms, 0, INT32_MAX);
    boolean("synchronous-commit", c.synchronous_commit);
    if (c.synchronous_commit)
        c.durability = "sync";
    if (c.max_sessions_per_role == 0)
        c.max_sessions_per_role = std::max<uint32_t>(1, c.apply_sessions / 2);
    boolean("once", c.once);
    if (auto v = str("pid-file")) c.pid_file = *v;
    if (auto v = str("http-listen")) {
        c.http_listen = *v;
        c.http_listen_explicit = true;
    }
    u32("ready-max-lag-seconds", c.ready_max_lag_seconds, 0, 86400 * 365);
    u32("monitor-interval-ms", c.monitor_interval_ms, 100, 3600000);
    u32("state-retention-days", c.state_retention_days, 0, 36500);
    u32("state-retention-records", c.state_retention_records, 0, 4000000000U);
    u32("state-retention-interval-ms", c.state_retention_interval_ms, 1000, 86400000);

    if (c.dbnames.empty())
        throw ConfigError("no database: give --dbname (repeatable) or 'dbname = ...' in the config file");
    std::set<std::string> seen;
    for (const auto& d : c.dbnames) {
        if (d.empty())
            throw ConfigError("empty --dbname");
        if (!seen.insert(d).second)
            throw ConfigError("database '" + d + "' given twice");
    }
    if (c.state_dir.empty())
        throw ConfigError("--state-dir is required");
    if (c.retry_cap_ms < c.retry_base_ms)
        throw ConfigError("--retry-cap-ms is smaller than --retry-base-ms");
    return out;
}

std::map<std::string, std::vector<std::string>> read_config_values(const std::string& path)
{
    return read_config_file(path);
}

std::optional<spdlog::level::level_enum> reload_log_level(const Config& current)
{
    if (current.config_file.empty() || current.log_level_from_cli)
        return std::nullopt;
    FileValues file = read_config_file(current.config_file);
    auto it = file.find("log-level");
    if (it == file.end())
        return std::nullopt;
    try {
        return parse_log_level(it->second.front());
    } catch (const std::invalid_argument& e) {
        throw ConfigError(e.what());
    }
}

}  // namespace atx::applier
