// atx-applier settings: every daemon option is defined once, in define_daemon_options()
// (config.cc: name, help, default, range or choices), for CLI11; the command line, the config
// file (config_file.h) and --help all come from that definition.
//
// The config file (--config) holds `name = value` lines using the long option names without
// "--". An option given on the command line wins over the file (for dbname: the whole list).
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <spdlog/spdlog.h>

#include "version.h"  // kApplierVersion

namespace CLI {
class App;
}

namespace atx::applier {

struct Config {
    std::string conninfo;              // base conninfo; dbname etc. are added per database
    std::vector<std::string> dbnames;  // databases to serve
    std::string state_dir;             // RocksDB directory (required)
    std::string config_file;
    std::string log_file;  // empty: stderr
    spdlog::level::level_enum log_level = spdlog::level::info;
    uint32_t batch_size = 500;
    uint32_t batch_delay_ms = 0;             // 0: apply what has arrived; batches form by themselves under load
    uint32_t statement_timeout_ms = 60000;   // longest run of one message
    uint32_t lock_timeout_ms = 10000;        // a lock wait longer than this is retried later
    uint32_t apply_sessions = 4;             // regular apply sessions per database
    uint32_t max_sessions_per_role = 0;      // 0: half of apply_sessions (at least 1); per principal
    uint32_t nested_sessions = 24;           // extra sessions for nested atx_exec waits
    uint32_t max_nested_per_role = 16;       // nested sessions one principal may occupy (a 16-deep
                                             // chain of atx_exec waits needs 15)
    uint32_t max_nonatomic = 2;              // background workers for non-atomic messages at once
    uint32_t max_nonatomic_per_role = 1;     // ... per principal
    uint32_t terminate_grace_ms = 2000;      // past a message's deadline, its backend is ended after this
    uint32_t park_after_ms = 5000;           // a message stuck behind its lane or role this long is parked; 0: never
    uint32_t session_memory_limit_mb = 128;  // an apply session holding more is recycled; 0: no limit
    uint32_t spare_sessions = 2;             // idle connections a regular apply session keeps for the
                                             // roles it served last
    uint32_t max_retry_seconds = 60;         // a transient failure is dead-lettered after this long
                                             // (its last attempt only gets what is left of it)
    uint32_t max_backend_losses = 2;         // losses while a message ran alone before it is dead-lettered
    uint32_t prune_interval_ms = 5000;       // atx.prune() cadence
    std::string durability = "auto";         // auto | local | sync | standby-flush
    uint32_t max_attempts = 8;
    uint32_t retry_base_ms = 100;
    uint32_t retry_cap_ms = 30000;
    uint32_t status_interval_ms = 1000;
    bool synchronous_commit = false;
    std::string pid_file;
    bool once = false;
    uint32_t idle_exit_ms = 2000;
    bool log_level_from_cli = false;               // SIGHUP reloads the level only when the file owns it
    std::string http_listen = "127.0.0.1:9478";    // metrics/health listener; "off" disables it
    bool http_listen_explicit = false;             // given on the command line or in the file: a
                                                   // port that cannot be bound is then fatal
    uint32_t ready_max_lag_seconds = 60;           // /readyz fails above this lag
    uint32_t monitor_interval_ms = 5000;           // how often the server is asked for slot/lag/dead letters
    uint32_t state_retention_days = 7;             // delivery history older than this is deleted; 0: no age limit
    uint32_t state_retention_records = 1000000;    // newest records kept per database; 0: no count limit
    uint32_t state_retention_interval_ms = 60000;  // how often the retention sweep runs
};

inline constexpr const char* kDefaultHttpListen = "127.0.0.1:9478";

class ConfigError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

struct ParseOutcome {
    enum class Action { Run, Help, Version } action = Action::Run;
    Config config;
    std::string text;  // --help / --version output
};

// Throws ConfigError for unknown options, bad values, an unreadable or invalid config file, or a
// missing required setting.
ParseOutcome parse_config(int argc, const char* const* argv);

// Re-reads the log level from the config file (for SIGHUP). nullopt when there is no file, the
// file has no log-level line, or --log-level fixed it. Throws ConfigError on bad input.
std::optional<spdlog::level::level_enum> reload_log_level(const Config& current);

// Adds every daemon option to `app`, bound to the fields of `c` (which hold the defaults).
// Checks that need several options (dbname given, retry-cap >= retry-base, ...) are in
// parse_config. A new option is one more line here and, if it has a default, a field in Config.
void define_daemon_options(CLI::App& app, Config& c);

// The names a config file may set (the daemon's options; the operator commands read the same
// file): name -> whether it may have several values.
std::map<std::string, bool> config_file_names();

}  // namespace atx::applier
