// Operator commands of atx-applier: `atx-applier <command> [options]` (docs/operations.md).
// The commands live in applier/cli/, one file each; `atx-applier <command> --help` lists the
// options of one. Exit status: 0 success, 1 usage, connection or privilege error, 2 `check` found
// a problem or a retried message still fails, 4 not found.
#pragma once

#include <string>

namespace atx::applier {

bool is_cli_command(const char* arg);
int run_cli(int argc, char** argv);  // argv[0] is the command name

// One line per command (usage and what it does), for the daemon's --help.
std::string cli_command_list();

}  // namespace atx::applier
