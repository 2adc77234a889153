// The daemon's options, defined once for CLI11; see config.h and config_file.h.
#include "config.h"

#include <CLI/CLI.hpp>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <set>

#include "cli.h"
#include "config_file.h"
#include "logging.h"

namespace atx::applier {

namespace {

// A number option: the range is checked by CLI11 and shown in --help with the default.
CLI::Option* number(CLI::App& app, const std::string& name, uint32_t& field, uint32_t min, uint32_t max,
                    const std::string& help)
{
    return app.add_option("--" + name, field, help + " (" + std::to_string(min) + ".." + std::to_string(max) + ")")
        ->type_name("N")
        ->capture_default_str()
        ->check(CLI::Range(min, max).description(""))
        ->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
}

CLI::Option* text(CLI::App& app, const std::string& name, std::string& field, const std::string& help,
                  const std::string& type = "TEXT")
{
    return app.add_option("--" + name, field, help)
        ->type_name(type)
        ->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
}

// True when argv names the option itself (--name or --name=value): the config file then did not
// provide it. Only used to pin --log-level and to say where a bad value came from.
bool on_command_line(int argc, const char* const* argv, const std::string& name)
{
    const std::string flag = "--" + name;
    for (int i = 1; i < argc; ++i)
        if (argv[i] == flag || std::strncmp(argv[i], (flag + "=").c_str(), flag.size() + 1) == 0)
            return true;
    return false;
}

const char* const kLogLevels[] = {"trace", "debug", "info", "warning", "warn", "error", "critical", "off"};

std::string footer()
{
    return "A config file (--config) holds 'name = value' lines with the long option names; the\n"
           "command line wins over it (docs/operations.md).\n"
           "Exit status: 0 clean shutdown, 1 configuration error (with --once also: a database not "
           "ready, e.g. extension missing), 3 a slot was lost (wal_status 'lost').\n"
           "Operator commands (atx-applier <command> --help lists the options of one):" +
           cli_command_list() +
           "\n"
           "Signals: SIGTERM/SIGINT finish the in-flight batch, confirm and exit; SIGHUP reopens the "
           "log file and reloads log-level.";
}

// The daemon's command line: the options, --config, --help, --version.
std::unique_ptr<CLI::App> make_app(Config& c)
{
    auto app = std::make_unique<CLI::App>(
        "Applies pg_atx autonomous statements, exactly once, from each database's pg_atx logical slot.", "atx-applier");
    app->set_help_flag("-h,--help", "print this help and exit");
    app->set_version_flag("--version", std::string("atx-applier ") + kApplierVersion, "print the version and exit");
    app->get_formatter()->column_width(36);
    define_daemon_options(*app, c);
    app->set_config("--config", "", "config file of 'name = value' lines (long option names)")->type_name("FILE");
    app->config_formatter(std::make_shared<ConfigFileFormat>(configurable_names(*app)));
    app->allow_config_extras(CLI::config_extras_mode::error);
    app->footer(footer());
    return app;
}

}  // namespace

void define_daemon_options(CLI::App& app, Config& c)
{
    text(app, "conninfo", c.conninfo,
         "base libpq conninfo; dbname is added per database (default: the libpq environment)", "CONNINFO");
    app.add_option("--dbname", c.dbnames, "database to serve; repeat for several (required)")
        ->type_name("NAME")
        ->allow_extra_args(false);
    text(app, "state-dir", c.state_dir, "RocksDB state directory (required)", "DIR");
    text(app, "log-file", c.log_file, "log file, reopened on SIGHUP (default: stderr)", "FILE");
    app.add_option_function<std::string>(
           "--log-level", [&c](const std::string& v) { c.log_level = parse_log_level(v); },
           "trace|debug|info|warning|error|critical|off")
        ->type_name("LEVEL")
        ->default_str("info")
        ->check(CLI::IsMember(std::vector<std::string>(std::begin(kLogLevels), std::end(kLogLevels))).description(""))
        ->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
    number(app, "batch-size", c.batch_size, 1, 100000, "messages per apply transaction at most");
    number(app, "batch-delay-ms", c.batch_delay_ms, 0, 60000,
           "how long to wait for more messages when the stream is idle before applying a partial batch; 0 "
           "applies what has arrived, and batches still form under load");
    number(app, "statement-timeout-ms", c.statement_timeout_ms, 0, INT32_MAX,
           "longest run of one message; a message that runs longer is cancelled and dead-lettered, and if "
           "it does not stop, its apply session is ended after --terminate-grace-ms");
    number(app, "terminate-grace-ms", c.terminate_grace_ms, 100, 600000,
           "how long past its time limit a message that ignores the cancel may run before the applier ends its "
           "apply session");
    number(app, "spare-sessions", c.spare_sessions, 0, 16,
           "idle connections each regular apply session keeps open for the roles it served last, so that a "
           "batch of one of them needs no new connection (sessions serve one role each; every spare holds a "
           "backend); 0: none");
    number(app, "park-after-ms", c.park_after_ms, 0, 3600000,
           "a message that has waited this long behind a statement of its own lane or role that has run as long "
           "is copied into the server (atx.park), so that the slot moves past it; it runs later from that copy; 0: "
           "never (the slot then waits for it)");
    number(app, "lock-timeout-ms", c.lock_timeout_ms, 0, INT32_MAX,
           "lock_timeout of the apply sessions: a longer lock wait is retried later, freeing the session");
    number(app, "apply-sessions", c.apply_sessions, 1, 64, "apply sessions per database");
    number(app, "max-sessions-per-role", c.max_sessions_per_role, 0, 64,
           "apply sessions the messages one login role caused may occupy at once (its group roles and the "
           "SECURITY DEFINER functions it calls included); 0: half of --apply-sessions, at least 1");
    number(app, "nested-sessions", c.nested_sessions, 0, 256,
           "extra sessions that serve atx_exec calls made by running messages (opened on demand)");
    number(app, "max-nested-per-role", c.max_nested_per_role, 1, 256,
           "nested sessions the messages one login role caused may occupy at once");
    number(app, "max-nonatomic", c.max_nonatomic, 1, 64,
           "background workers running messages that need a top-level statement, at once per database");
    number(app, "max-nonatomic-per-role", c.max_nonatomic_per_role, 1, 64,
           "of those, what the messages one login role caused may occupy");
    number(app, "session-memory-limit-mb", c.session_memory_limit_mb, 0, 1048576,
           "an apply session whose backend holds more memory after a batch is closed and opened again; 0: never");
    number(app, "max-retry-seconds", c.max_retry_seconds, 1, 86400 * 30,
           "a message failing transiently for longer is dead-lettered");
    number(app, "max-backend-losses", c.max_backend_losses, 1, 100,
           "a message running alone when its apply backend is lost this often is dead-lettered");
    number(app, "prune-interval-ms", c.prune_interval_ms, 100, 3600000,
           "how often the server forgets handled messages the slot confirmed (atx.prune)");
    number(app, "state-retention-days", c.state_retention_days, 0, 36500,
           "delivery history in the state directory older than this is deleted; 0 keeps it by age");
    number(app, "state-retention-records", c.state_retention_records, 0, 4000000000U,
           "at most this many delivery records are kept per database, the newest; 0 sets no limit");
    number(app, "state-retention-interval-ms", c.state_retention_interval_ms, 1000, 86400000,
           "how often the retention sweep runs");
    text(app, "durability", c.durability,
         "what must hold before the slot is confirmed past a message: auto (sync while "
         "synchronous_standby_names is set, else local; read again every status interval), local (flushed here), sync "
         "(synchronous apply "
         "commits), standby-flush (flushed by every streaming standby)",
         "MODE")
        ->capture_default_str()
        ->check(CLI::IsMember({"auto", "local", "sync", "standby-flush"}).description(""));
    number(app, "max-attempts", c.max_attempts, 1, 1000000,
           "attempts for a transiently failing message before it is dead-lettered");
    number(app, "retry-base-ms", c.retry_base_ms, 0, INT32_MAX, "first retry backoff");
    number(app, "retry-cap-ms", c.retry_cap_ms, 0, INT32_MAX, "largest retry backoff");
    number(app, "status-interval-ms", c.status_interval_ms, 10, 3600000, "standby status update interval");
    app.add_flag("--synchronous-commit", c.synchronous_commit, "same as --durability sync");
    text(app, "pid-file", c.pid_file, "write the process id here (default: none)", "FILE");
    app.add_flag("--once", c.once,
                 "exit 0 when every stream has been idle for --idle-exit-ms and everything is confirmed");
    number(app, "idle-exit-ms", c.idle_exit_ms, 0, INT32_MAX, "idle time before --once exits");
    text(app, "http-listen", c.http_listen,
         "host:port of the /metrics, /healthz, /readyz listener, or 'off'; port 0 picks a free one", "ADDR")
        ->capture_default_str();
    number(app, "ready-max-lag-seconds", c.ready_max_lag_seconds, 0, 86400 * 365,
           "/readyz answers 503 when a database lags more");
    number(app, "monitor-interval-ms", c.monitor_interval_ms, 100, 3600000,
           "how often the server is asked for slot status, lag in bytes and dead letters");
}

std::map<std::string, bool> config_file_names()
{
    Config scratch;
    return configurable_names(*make_app(scratch));
}

ParseOutcome parse_config(int argc, const char* const* argv)
{
    ParseOutcome out;
    Config& c = out.config;
    auto app = make_app(c);
    try {
        app->parse(argc, argv);
    } catch (const CLI::CallForHelp&) {
        out.action = ParseOutcome::Action::Help;
        out.text = app->help();
        return out;
    } catch (const CLI::CallForVersion& e) {
        out.action = ParseOutcome::Action::Version;
        out.text = std::string(e.what()) + "\n";
        return out;
    } catch (const CLI::ParseError& e) {
        std::string msg = e.what();
        const CLI::Option* file = app->get_config_ptr();
        const std::string path = file->count() ? file->as<std::string>() : "";
        if (!path.empty()) {
            // Say where a bad value came from when it was not on the command line.
            if (dynamic_cast<const CLI::ConfigError*>(&e) != nullptr) {
                msg = "config file " + path + ": " + msg;
            } else if (const size_t dash = msg.find("--"); dash != std::string::npos) {
                const size_t end = msg.find_first_not_of("abcdefghijklmnopqrstuvwxyz-", dash + 2);
                const std::string name = msg.substr(dash + 2, end == std::string::npos ? end : end - dash - 2);
                if (!name.empty() && !on_command_line(argc, argv, name))
                    msg = "config file " + path + ": " + msg;
            }
        }
        throw ConfigError(msg);
    } catch (const std::invalid_argument& e) {  // parse_log_level, after the check: not expected
        throw ConfigError(e.what());
    }
    if (const CLI::Option* file = app->get_config_ptr(); file->count())
        c.config_file = file->as<std::string>();
    c.log_level_from_cli = on_command_line(argc, argv, "log-level");
    c.http_listen_explicit = app->get_option("--http-listen")->count() > 0;
    if (c.synchronous_commit)
        c.durability = "sync";
    if (c.max_sessions_per_role == 0)
        c.max_sessions_per_role = std::max<uint32_t>(1, c.apply_sessions / 2);

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
    if (c.max_nonatomic_per_role > c.max_nonatomic)
        throw ConfigError("--max-nonatomic-per-role is larger than --max-nonatomic");
    return out;
}

std::optional<spdlog::level::level_enum> reload_log_level(const Config& current)
{
    if (current.config_file.empty() || current.log_level_from_cli)
        return std::nullopt;
    std::ifstream in(current.config_file);
    if (!in)
        throw ConfigError("cannot read config file " + current.config_file);
    try {
        for (const auto& e : parse_config_text(in, config_file_names()))
            if (e.name == "log-level")
                return parse_log_level(e.values.front());
    } catch (const CLI::ConfigError& e) {
        throw ConfigError("config file " + current.config_file + ": " + e.what());
    } catch (const std::invalid_argument& e) {
        throw ConfigError(e.what());
    }
    return std::nullopt;
}

}  // namespace atx::applier
