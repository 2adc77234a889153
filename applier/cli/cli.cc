// The operator commands' command lines: a CLI11 app per command with the options all commands
// share (defined once, here) and the command's own (commands.h); see cli.h.
#include "cli.h"

#include <CLI/CLI.hpp>

#include <cstdio>
#include <cstring>
#include <iostream>
#include <string>
#include <vector>

#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include "commands.h"
#include "config.h"
#include "config_file.h"

namespace atx::applier {

namespace {

using namespace cli;

struct Command {
    const char* name;
    const char* usage;  // arguments, for the daemon's --help
    const char* summary;
    void (*define)(CLI::App&, Options&);
    int (*run)(Context&);
};

const Command kCommands[] = {
    {"status", "", "per database: streaming, confirmed position, apply horizon, lag, last handled, rate, dead letters",
     define_status, run_status},
    {"show", "<message-id|key|id>", "what the server and the local history know about one message", define_show,
     run_show},
    {"dead-letters", "[--limit N]", "list atx.dead_letter, oldest first", define_dead_letters, run_dead_letters},
    {"retry", "<id|message-id> | --all", "run dead letters again through atx.retry_dead_letter, exactly once",
     define_retry, run_retry},
    {"discard", "<id|message-id> --reason TEXT", "delete a dead letter, keeping an audit trail", define_discard,
     run_discard},
    {"dead-letter", "<lsn|message-id> --reason TEXT",
     "dead-letter one message without running it (57000), keeping an audit trail", define_dead_letter, run_dead_letter},
    {"check", "", "verify the server setup and the applier role's privileges", define_check, run_check},
};

const Command* find(const char* name)
{
    for (const auto& c : kCommands)
        if (std::strcmp(name, c.name) == 0)
            return &c;
    return nullptr;
}

// The options every command takes. conninfo, dbname and state-dir mean what they mean for the
// daemon, and the daemon's config file provides them (the command line wins).
void define_common(CLI::App& app, Options& o)
{
    app.add_option("--conninfo", o.conninfo, "base libpq conninfo (default: the libpq environment)")
        ->type_name("CONNINFO");
    app.add_option("--dbname", o.dbs, "database; repeat for several (default: libpq's PGDATABASE)")
        ->type_name("NAME")
        ->allow_extra_args(false);
    app.add_option("--state-dir", o.state_dir, "the daemon's RocksDB state directory, read-only (and the audit file)")
        ->type_name("DIR");
    app.add_flag("--json", o.json_out, "JSON output (complete texts) instead of human output")->configurable(false);
}

std::unique_ptr<CLI::App> make_app(const Command& cmd, Options& o)
{
    auto app = std::make_unique<CLI::App>(cmd.summary, std::string("atx-applier ") + cmd.name);
    app->set_help_flag("-h,--help", "print this help and exit");
    app->get_formatter()->column_width(30);
    define_common(*app, o);
    cmd.define(*app, o);
    for (CLI::Option* opt : app->get_options())
        if (opt->get_lnames().empty() ||
            (opt->get_lnames().front() != "conninfo" && opt->get_lnames().front() != "dbname" &&
             opt->get_lnames().front() != "state-dir"))
            opt->configurable(false);
    // The daemon's file: its other settings are the daemon's, and names outside it are refused.
    app->set_config("--config", "", "the daemon's config file: conninfo, dbname and state-dir are read from it")
        ->type_name("FILE");
    app->config_formatter(std::make_shared<ConfigFileFormat>(config_file_names()));
    app->allow_config_extras(CLI::config_extras_mode::ignore);
    app->footer("Exit status: 0 ok, 1 usage, connection or privilege error, 2 check found a problem or a retried "
                "message still fails, 4 not found.");
    return app;
}

}  // namespace

bool is_cli_command(const char* arg) { return find(arg) != nullptr; }

std::string cli_command_list()
{
    std::string s;
    for (const auto& c : kCommands) {
        std::string u = std::string(c.name) + (*c.usage ? " " : "") + c.usage;
        s += "\n  atx-applier " + u + std::string(u.size() < 40 ? 40 - u.size() : 1, ' ') + c.summary;
    }
    return s;
}

int run_cli(int argc, char** argv)
{
    const Command* cmd = argc > 0 ? find(argv[0]) : nullptr;
    if (cmd == nullptr)
        return kUsage;
    Context c;
    auto app = make_app(*cmd, c.opt);
    try {
        app->parse(argc, argv);
    } catch (const CLI::CallForHelp&) {
        std::cout << app->help();
        return kOk;
    } catch (const CLI::ParseError& e) {
        std::string msg = e.what();
        if (dynamic_cast<const CLI::ConfigError*>(&e) != nullptr && app->get_config_ptr()->count())
            msg = "config file " + app->get_config_ptr()->as<std::string>() + ": " + msg;
        std::fprintf(stderr, "atx-applier %s: %s\nTry 'atx-applier %s --help'.\n", cmd->name, printable(msg).c_str(),
                     cmd->name);
        return kUsage;
    }
    // Library logging (RocksDB's, through the state store) goes to stderr, warnings only: stdout
    // is the command's output, possibly --json for a script.
    auto err = std::make_shared<spdlog::logger>("atx-applier-cli", std::make_shared<spdlog::sinks::stderr_sink_mt>());
    err->set_level(spdlog::level::warn);
    spdlog::set_default_logger(err);
    if (!c.opt.state_dir.empty())
        c.state = StateReader::open(c.opt.state_dir, &c.state_why);
    try {
        return cmd->run(c);
    } catch (const UsageError& e) {
        std::fprintf(stderr, "atx-applier %s: %s\nTry 'atx-applier %s --help'.\n", cmd->name,
                     printable(e.what()).c_str(), cmd->name);
        return kUsage;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "atx-applier %s: %s\n", cmd->name, printable(e.what()).c_str());
        return kUsage;
    }
}

}  // namespace atx::applier
