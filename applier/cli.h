// Operator commands of atx-applier: `atx-applier <command> [options]` (docs/operations.md).
//
//   status                      per database: stream state, lag, last applied, rate, dead letters
//   show <message-id|key|id>    delivery state of one message in RocksDB and on the server
//   dead-letters                list atx.dead_letter
//   retry <id|message-id>       apply a dead letter again and delete it in the same transaction
//   retry --all                 every dead letter, in id order, with progress on stderr
//   discard <id|message-id> --reason TEXT
//                               delete a dead letter, keeping the whole row and the reason in an
//                               audit trail (server log, <state-dir>/operator-audit.jsonl, RocksDB
//                               meta when the daemon is not running)
//   check                       verify the server setup for the applier
// Options: --conninfo, --dbname (repeatable), --state-dir, --config (the daemon's file: conninfo,
// dbname and state-dir are taken from it), --json, --limit.
// Exit status: 0 success, 1 usage / connection error, 2 `check` found a problem or a retry failed,
// 4 not found.
#pragma once

namespace atx::applier {

bool is_cli_command(const char* arg);
int run_cli(int argc, char** argv);  // argv[0] is the command name

}  // namespace atx::applier
