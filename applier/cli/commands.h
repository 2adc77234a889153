// The operator commands, one file each; cli.cc lists them in its command table.
//
// define_*: the options and arguments the command takes beyond the common ones (--conninfo,
// --dbname, --state-dir, --config, --json), bound to Options; run_*: the command itself,
// returning its exit status (context.h).
#pragma once

#include "context.h"

namespace CLI {
class App;
}

namespace atx::applier::cli {

void define_status(CLI::App& app, Options& o);
int run_status(Context& c);

void define_show(CLI::App& app, Options& o);
int run_show(Context& c);

void define_dead_letters(CLI::App& app, Options& o);
int run_dead_letters(Context& c);

void define_retry(CLI::App& app, Options& o);
int run_retry(Context& c);

void define_discard(CLI::App& app, Options& o);
int run_discard(Context& c);

void define_dead_letter(CLI::App& app, Options& o);
int run_dead_letter(Context& c);

void define_check(CLI::App& app, Options& o);
int run_check(Context& c);

// Dead letter ids (as text) that `target` (an id or a message id) names, per database (the
// index into dbs); --all: every dead letter. Shared by retry and discard. UsageError when a
// target matches in several databases.
struct Target {
    size_t db;
    std::string id;
};
std::vector<Target> find_targets(const Context& c, std::vector<Db>& dbs, bool all);

}  // namespace atx::applier::cli
