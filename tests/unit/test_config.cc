// The daemon's options (applier/config.cc) and the config file format (applier/config_file.h):
// every option reaches its field, the command line wins over the file, bad input is refused with
// a message that says where, --help lists every option.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <algorithm>
#include <functional>
#include <map>
#include <set>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "cli.h"
#include "config.h"
#include "config_file.h"

using namespace atx::applier;

namespace {

// A config file that removes itself.
struct TempFile {
    std::string path;
    explicit TempFile(const std::string& text)
    {
        char tmpl[] = "/tmp/atx-config-test.XXXXXX";
        const int fd = ::mkstemp(tmpl);
        REQUIRE(fd >= 0);
        ::close(fd);
        path = tmpl;
        std::ofstream(path) << text;
    }
    ~TempFile() { std::remove(path.c_str()); }
};

ParseOutcome parse(std::vector<std::string> args)
{
    args.insert(args.begin(), "atx-applier");
    std::vector<const char*> argv;
    for (const auto& a : args)
        argv.push_back(a.c_str());
    return parse_config(static_cast<int>(argv.size()), argv.data());
}

Config parse_ok(std::vector<std::string> args)
{
    ParseOutcome o = parse(std::move(args));
    REQUIRE(o.action == ParseOutcome::Action::Run);
    return o.config;
}

// The ConfigError message of a parse that must fail.
std::string parse_error(std::vector<std::string> args)
{
    try {
        parse(std::move(args));
    } catch (const ConfigError& e) {
        return e.what();
    }
    FAIL("no ConfigError");
    return "";
}

const std::vector<std::string> kRequired = {"--dbname", "app", "--state-dir", "/tmp/state"};

std::vector<std::string> with_required(std::vector<std::string> args)
{
    args.insert(args.end(), kRequired.begin(), kRequired.end());
    return args;
}

// One value per option (none of them the default) and the field it must reach.
struct Case {
    std::string name;
    std::string value;
    std::function<bool(const Config&)> reached;
};

std::vector<Case> every_option()
{
    return {
        {"conninfo", "host=/run/postgresql user=atx_app",
         [](const Config& c) { return c.conninfo == "host=/run/postgresql user=atx_app"; }},
        {"log-file", "/tmp/x.log", [](const Config& c) { return c.log_file == "/tmp/x.log"; }},
        {"log-level", "debug", [](const Config& c) { return c.log_level == spdlog::level::debug; }},
        {"batch-size", "7", [](const Config& c) { return c.batch_size == 7; }},
        {"batch-delay-ms", "9", [](const Config& c) { return c.batch_delay_ms == 9; }},
        {"statement-timeout-ms", "1234", [](const Config& c) { return c.statement_timeout_ms == 1234; }},
        {"lock-timeout-ms", "4321", [](const Config& c) { return c.lock_timeout_ms == 4321; }},
        {"apply-sessions", "9", [](const Config& c) { return c.apply_sessions == 9; }},
        {"max-sessions-per-role", "3", [](const Config& c) { return c.max_sessions_per_role == 3; }},
        {"nested-sessions", "5", [](const Config& c) { return c.nested_sessions == 5; }},
        {"max-retry-seconds", "77", [](const Config& c) { return c.max_retry_seconds == 77; }},
        {"max-backend-losses", "6", [](const Config& c) { return c.max_backend_losses == 6; }},
        {"terminate-grace-ms", "1500", [](const Config& c) { return c.terminate_grace_ms == 1500; }},
        {"park-after-ms", "0", [](const Config& c) { return c.park_after_ms == 0; }},
        {"spare-sessions", "5", [](const Config& c) { return c.spare_sessions == 5; }},
        {"max-nested-per-role", "7", [](const Config& c) { return c.max_nested_per_role == 7; }},
        {"max-nonatomic", "5", [](const Config& c) { return c.max_nonatomic == 5; }},
        {"max-nonatomic-per-role", "1", [](const Config& c) { return c.max_nonatomic_per_role == 1; }},
        {"session-memory-limit-mb", "64", [](const Config& c) { return c.session_memory_limit_mb == 64; }},
        {"prune-interval-ms", "999", [](const Config& c) { return c.prune_interval_ms == 999; }},
        {"state-retention-days", "3", [](const Config& c) { return c.state_retention_days == 3; }},
        {"state-retention-records", "3000000000",
         [](const Config& c) { return c.state_retention_records == 3000000000U; }},
        {"state-retention-interval-ms", "5000", [](const Config& c) { return c.state_retention_interval_ms == 5000; }},
        {"durability", "standby-flush", [](const Config& c) { return c.durability == "standby-flush"; }},
        {"max-attempts", "3", [](const Config& c) { return c.max_attempts == 3; }},
        {"retry-base-ms", "11", [](const Config& c) { return c.retry_base_ms == 11; }},
        {"retry-cap-ms", "22222", [](const Config& c) { return c.retry_cap_ms == 22222; }},
        {"status-interval-ms", "333", [](const Config& c) { return c.status_interval_ms == 333; }},
        {"synchronous-commit", "true", [](const Config& c) { return c.synchronous_commit && c.durability == "sync"; }},
        {"pid-file", "/tmp/x.pid", [](const Config& c) { return c.pid_file == "/tmp/x.pid"; }},
        {"once", "true", [](const Config& c) { return c.once; }},
        {"idle-exit-ms", "55", [](const Config& c) { return c.idle_exit_ms == 55; }},
        {"http-listen", "127.0.0.1:0",
         [](const Config& c) { return c.http_listen == "127.0.0.1:0" && c.http_listen_explicit; }},
        {"ready-max-lag-seconds", "8", [](const Config& c) { return c.ready_max_lag_seconds == 8; }},
        {"monitor-interval-ms", "444", [](const Config& c) { return c.monitor_interval_ms == 444; }},
    };
}

}  // namespace

TEST_CASE("defaults", "[config]")
{
    const Config c = parse_ok(kRequired);
    const Config d;
    CHECK(c.dbnames == std::vector<std::string>{"app"});
    CHECK(c.state_dir == "/tmp/state");
    CHECK(c.batch_size == d.batch_size);
    CHECK(c.durability == "auto");
    CHECK(c.max_sessions_per_role == 2);  // 0: half of the 4 apply sessions
    CHECK(c.http_listen == kDefaultHttpListen);
    CHECK_FALSE(c.http_listen_explicit);
    CHECK(c.log_level == spdlog::level::info);
    CHECK_FALSE(c.log_level_from_cli);
    CHECK(c.config_file.empty());
}

TEST_CASE("every option reaches its field, from the command line and from the file", "[config]")
{
    const auto names = config_file_names();
    const auto cases = every_option();
    // The table covers every option but the required ones: a new option needs a line here.
    CHECK(names.size() == cases.size() + 2);  // + dbname and state-dir (required)
    for (const auto& k : cases) {
        INFO(k.name);
        CHECK(names.count(k.name) == 1);
        const bool flag = k.name == "once" || k.name == "synchronous-commit";
        CHECK(k.reached(parse_ok(with_required(flag ? std::vector<std::string>{"--" + k.name}
                                                    : std::vector<std::string>{"--" + k.name, k.value}))));
        CHECK(k.reached(parse_ok(with_required({"--" + k.name + "=" + k.value}))));
        TempFile f(k.name + " = " + k.value + "\n");
        CHECK(k.reached(parse_ok(with_required({"--config", f.path}))));
    }
}

TEST_CASE("the command line wins over the config file", "[config]")
{
    TempFile f("# settings\n"
               "conninfo = host=/run/postgresql user=atx_app password=a#b connect_timeout=10\n"
               "dbname = app\n"
               "state-dir = /var/lib/atx-applier\n"
               "dbname = billing\n"
               "batch-size = 50\n"
               "log-level = warning\n"
               "http-listen = 127.0.0.1:9999\n");
    const Config file = parse_ok({"--config", f.path});
    CHECK(file.conninfo == "host=/run/postgresql user=atx_app password=a#b connect_timeout=10");
    CHECK(file.dbnames == std::vector<std::string>{"app", "billing"});  // repeated lines, in order
    CHECK(file.batch_size == 50);
    CHECK(file.log_level == spdlog::level::warn);
    CHECK_FALSE(file.log_level_from_cli);
    CHECK(file.http_listen_explicit);
    CHECK(file.config_file == f.path);

    const Config both = parse_ok({"--config", f.path, "--dbname", "shop", "--batch-size", "5", "--log-level", "error",
                                  "--state-dir", "/tmp/other"});
    CHECK(both.dbnames == std::vector<std::string>{"shop"});  // the whole list, not added to the file's
    CHECK(both.batch_size == 5);
    CHECK(both.state_dir == "/tmp/other");
    CHECK(both.log_level == spdlog::level::err);
    CHECK(both.log_level_from_cli);
    CHECK(both.conninfo == file.conninfo);  // not given: the file's

    CHECK(parse_ok(with_required({"--batch-size", "3", "--batch-size", "4"})).batch_size == 4);  // last wins
    CHECK(parse_ok({"--config", f.path, "--dbname", "a", "--dbname", "b"}).dbnames ==
          std::vector<std::string>{"a", "b"});
}

TEST_CASE("config file syntax: quotes, lists, booleans, comments", "[config]")
{
    TempFile f("; an INI comment\n"
               "   # an indented comment\n"
               "dbname = [app, \"bill ing\", 'x']   # a list\n"
               "state-dir = \"/var/lib/a b\" # a comment after a quoted value\n"
               "conninfo = 'host=h password=\"p\"'\n"
               "once = on\n"
               "synchronous-commit = yes\n"
               "\n");
    const Config c = parse_ok({"--config", f.path});
    CHECK(c.dbnames == std::vector<std::string>{"app", "bill ing", "x"});
    CHECK(c.state_dir == "/var/lib/a b");
    CHECK(c.conninfo == "host=h password=\"p\"");
    CHECK(c.once);
    CHECK(c.durability == "sync");

    TempFile off("dbname = a\nstate-dir = /s\nonce = off\n");
    CHECK_FALSE(parse_ok({"--config", off.path}).once);
}

TEST_CASE("bad input is refused and says where", "[config]")
{
    using Catch::Matchers::Contains;
    CHECK_THAT(parse_error(with_required({"--no-such-option"})), Contains("--no-such-option"));
    CHECK_THAT(parse_error(with_required({"stray"})), Contains("stray"));
    CHECK_THAT(parse_error(with_required({"--batch-size", "0"})), Contains("--batch-size"));
    CHECK_THAT(parse_error(with_required({"--batch-size", "100001"})), Contains("--batch-size"));
    CHECK_THAT(parse_error(with_required({"--batch-size", "-1"})), Contains("--batch-size"));
    CHECK_THAT(parse_error(with_required({"--batch-size", "12x"})), Contains("--batch-size"));
    CHECK_THAT(parse_error(with_required({"--durability", "fast"})), Contains("--durability"));
    CHECK_THAT(parse_error(with_required({"--log-level", "loud"})), Contains("--log-level"));
    CHECK_THAT(parse_error(with_required({"--prune-interval-ms", "99"})), Contains("prune-interval-ms"));
    CHECK_THAT(parse_error({"--state-dir", "/s"}), Contains("no database"));
    CHECK_THAT(parse_error({"--dbname", "a"}), Contains("--state-dir is required"));
    CHECK_THAT(parse_error(with_required({"--dbname", "app"})), Contains("given twice"));
    CHECK_THAT(parse_error(with_required({"--retry-base-ms", "10", "--retry-cap-ms", "5"})), Contains("retry-cap-ms"));
    CHECK_THAT(parse_error(with_required({"--config", "/nonexistent/atx.conf"})), Contains("/nonexistent/atx.conf"));

    struct Bad {
        std::string text, says;
    };
    for (const auto& b : std::vector<Bad>{
             {"batchsize = 5\n", "line 1: unknown setting 'batchsize'"},
             {"# c\nbatch-size = 5\nbatch-size = 6\n", "line 3: 'batch-size' set twice (first on line 2)"},
             {"just-a-name\n", "line 1: expected 'name = value'"},
             {"[atx]\nbatch-size = 5\n", "line 1: sections are not supported"},
             {"batch-size = [1, 2]\n", "'batch-size' takes one value"},
             {"conninfo = \"unterminated\n", "unterminated"},
             {"conninfo = \"a\" b\n", "unexpected text after the value"},
             {"dbname = [a, b\n", "unterminated list"},
             {"batch-size = 0\n", "batch-size"},
             {"durability = fast\n", "durability"},
             {"once = maybe\n", "once"},
             {"config = /etc/other.conf\n", "unknown setting 'config'"},
         }) {
        INFO(b.text);
        TempFile f(b.text);
        const std::string msg = parse_error(with_required({"--config", f.path}));
        CHECK_THAT(msg, Contains(b.says));
        CHECK_THAT(msg, Contains("config file " + f.path));
    }
}

TEST_CASE("--help lists every option and the operator commands; --version", "[config]")
{
    const ParseOutcome h = parse({"--help"});
    REQUIRE(h.action == ParseOutcome::Action::Help);
    for (const auto& [name, repeatable] : config_file_names()) {
        INFO(name);
        CHECK(h.text.find("--" + name + " ") != std::string::npos);
    }
    for (const char* s : {"--config", "--version", "--help", "(1..100000)", "=500", "status", "dead-letters", "retry",
                          "discard", "check", "Exit status"})
        CHECK(h.text.find(s) != std::string::npos);
    const ParseOutcome v = parse({"--version"});
    REQUIRE(v.action == ParseOutcome::Action::Version);
    CHECK(v.text == std::string("atx-applier ") + kApplierVersion + "\n");
}

TEST_CASE("SIGHUP reload of log-level", "[config]")
{
    TempFile f("dbname = a\nstate-dir = /s\nlog-level = debug\n");
    Config c = parse_ok({"--config", f.path});
    CHECK(reload_log_level(c) == spdlog::level::debug);
    std::ofstream(f.path) << "dbname = a\nstate-dir = /s\nlog-level = error\n";
    CHECK(reload_log_level(c) == spdlog::level::err);
    std::ofstream(f.path) << "dbname = a\nstate-dir = /s\n";
    CHECK_FALSE(reload_log_level(c).has_value());
    std::ofstream(f.path) << "log-level = loud\n";
    CHECK_THROWS_AS(reload_log_level(c), ConfigError);
    std::ofstream(f.path) << "log-levle = debug\n";
    CHECK_THROWS_AS(reload_log_level(c), ConfigError);
    // --log-level on the command line pins it.
    std::ofstream(f.path) << "dbname = a\nstate-dir = /s\nlog-level = debug\n";
    CHECK_FALSE(reload_log_level(parse_ok({"--config", f.path, "--log-level", "info"})).has_value());
    CHECK_FALSE(reload_log_level(parse_ok(kRequired)).has_value());
}

namespace {

// Runs an operator command's command line, capturing stdout.
int run_cli_capture(std::vector<std::string> args, std::string* out)
{
    std::vector<char*> argv;
    for (auto& a : args)
        argv.push_back(a.data());
    std::ostringstream buf;
    std::streambuf* old = std::cout.rdbuf(buf.rdbuf());
    const int rc = run_cli(static_cast<int>(argv.size()), argv.data());
    std::cout.rdbuf(old);
    *out = buf.str();
    return rc;
}

}  // namespace

TEST_CASE("operator commands: --help each, usage errors exit 1", "[config][cli]")
{
    struct Want {
        std::string command;
        std::vector<std::string> options;
    };
    for (const auto& w : std::vector<Want>{{"status", {}},
                                           {"show", {"ID|KEY"}},
                                           {"dead-letters", {"--limit"}},
                                           {"retry", {"--all", "ID"}},
                                           {"discard", {"--reason", "ID"}},
                                           {"check", {}}}) {
        INFO(w.command);
        std::string out;
        CHECK(run_cli_capture({w.command, "--help"}, &out) == 0);
        CHECK(out.find("Usage: atx-applier " + w.command) != std::string::npos);
        for (const char* common : {"--conninfo", "--dbname", "--state-dir", "--config", "--json", "--help"})
            CHECK(out.find(common) != std::string::npos);
        for (const auto& o : w.options)
            CHECK(out.find(o) != std::string::npos);
        CHECK(run_cli_capture({w.command, "--no-such-option"}, &out) == 1);
    }
    std::string out;
    CHECK(run_cli_capture({"discard", "12"}, &out) == 1);                  // --reason required
    CHECK(run_cli_capture({"discard", "12", "--reason", ""}, &out) == 1);  // and not empty
    CHECK(run_cli_capture({"retry", "12", "--all"}, &out) == 1);           // one or the other
    CHECK(run_cli_capture({"show"}, &out) == 1);                           // needs its argument
    CHECK(run_cli_capture({"dead-letters", "--limit", "0"}, &out) == 1);
    TempFile f("dbname = a\nbogus = 1\n");
    CHECK(run_cli_capture({"status", "--config", f.path}, &out) == 1);  // the daemon's names only
    CHECK(run_cli_capture({"status", "--config", "/nonexistent/atx.conf"}, &out) == 1);
}

TEST_CASE("docs/operations.md lists every option with its default and range", "[config][docs]")
{
    std::ifstream in(std::string(ATX_SOURCE_DIR) + "/docs/operations.md");
    REQUIRE(in);
    std::map<std::string, std::vector<std::string>> rows;  // option -> cells of its table row
    for (std::string line; std::getline(in, line);) {
        if (line.rfind("| `", 0) != 0)
            continue;
        std::vector<std::string> cells;
        std::stringstream ss(line.substr(1));
        for (std::string cell; std::getline(ss, cell, '|');) {
            const size_t b = cell.find_first_not_of(' '), e = cell.find_last_not_of(' ');
            cells.push_back(b == std::string::npos ? "" : cell.substr(b, e - b + 1));
        }
        if (cells.size() >= 3 && cells[0].size() > 2)
            rows.emplace(cells[0].substr(1, cells[0].size() - 2), cells);
    }
    Config c;
    CLI::App app;
    define_daemon_options(app, c);
    for (const CLI::Option* o : app.get_options()) {
        if (o->get_lnames().empty() || o == app.get_help_ptr())
            continue;
        const std::string name = o->get_lnames().front();
        INFO(name);
        REQUIRE(rows.count(name) == 1);
        const auto& cells = rows[name];
        std::string doc_default = cells[1];
        doc_default.erase(std::remove(doc_default.begin(), doc_default.end(), '`'), doc_default.end());
        if (!o->get_default_str().empty() && o->get_items_expected_max() == 1)
            CHECK(doc_default == o->get_default_str());
        // The range in --help is (min..max) at the end of the description.
        const std::string& desc = o->get_description();
        if (const size_t open = desc.rfind(" (");
            open != std::string::npos && desc.find("..", open) != std::string::npos)
            CHECK(desc.substr(open + 2, desc.size() - open - 3) == cells[2]);
    }
}

TEST_CASE("packaging/atx-applier.conf.example parses, with every commented setting enabled too", "[config][docs]")
{
    std::ifstream in(std::string(ATX_SOURCE_DIR) + "/packaging/atx-applier.conf.example");
    REQUIRE(in);
    std::string as_is, enabled;
    std::set<std::string> dbnames;
    for (std::string line; std::getline(in, line);) {
        as_is += line + "\n";
        // "#name = value" lines are settings to enable; "# text" lines are prose.
        if (line.size() > 1 && line[0] == '#' && line[1] != ' ' && line.find(" = ") != std::string::npos)
            line = line.substr(1);
        enabled += line + "\n";
    }
    TempFile a(as_is), b(enabled);
    const Config ca = parse_ok({"--config", a.path});
    CHECK(ca.dbnames == std::vector<std::string>{"app"});
    CHECK(ca.conninfo.find("user=atx_app") != std::string::npos);
    const Config cb = parse_ok({"--config", b.path});
    CHECK(cb.dbnames == std::vector<std::string>{"app", "billing"});
    CHECK(cb.log_file.find("atx-applier.log") != std::string::npos);
}
