// One apply session: an ordinary libpq connection whose backend runs atx.apply_batch.
//
// A batch is one round trip in pipeline mode, two statements, each its own transaction:
//   SELECT * FROM atx.apply_batch($lsns, $attempts, $first_failed, $max_attempts, $timeout, $wake)
//   SELECT pg_current_wal_insert_lsn()   -- at or past the end of that commit record
// The server reads each message from its own WAL by its start LSN, applies it as its caller and
// records it in atx.applied in the same transaction; the applier sends no payload at all.
#pragma once

#include <atomic>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "dispatcher.h"
#include "pg_conn.h"
#include "replication_protocol.h"

namespace atx::applier {

// One row of atx.apply_batch.
struct ApplyResult {
    Lsn start = 0;
    std::optional<std::string> message_id;
    ApplyStatus status = ApplyStatus::Rejected;
    std::string sqlstate;
    std::string error;
    std::string failure;  // permanent | transient | timeout | cancelled | needs top level | unauthenticated
    std::string command;
    int64_t rows = 0;
    int64_t backend_bytes = 0;  // what the apply backend holds after the batch
};

// What atx.run_nonatomic answers.
struct NonatomicResult {
    std::string status;  // applied | dead | already | retry (nothing ran) | in doubt (the run died half way)
    std::string sqlstate;
    std::string error;
    std::string command;
};

struct SessionSettings {
    uint32_t lock_timeout_ms = 10000;
    uint32_t statement_timeout_ms = 60000;  // per message, enforced by apply_batch and the watchdog
    uint32_t max_attempts = 8;
    bool wake_at_commit = true;    // atx_exec callers are woken by the commit itself
    uint32_t batch_budget_ms = 0;  // a batch takes no further message after this long (0: none)
};

// Changes when the server restarts, also by crash recovery (the postmaster keeps its start
// time then, but recovery discards the statistics, which resets pg_stat_wal.stats_reset).
inline constexpr const char* kServerGenerationSql =
    "pg_catalog.pg_postmaster_start_time()::pg_catalog.text OPERATOR(pg_catalog.||) ' ' OPERATOR(pg_catalog.||) "
    "COALESCE((SELECT stats_reset::pg_catalog.text FROM pg_catalog.pg_stat_wal), '')";

class ApplySession {
public:
    // Connects with application_name 'atx-applier apply <name>' (operators and tests find a
    // session's backend by it) and applies the settings. A fresh session serves no one yet.
    void connect(const std::string& base_conninfo, const std::string& dbname, const SessionSettings& s,
                 const std::string& name);
    void close();
    // Exchanges connections (and what each serves) with another session of this thread: a worker
    // keeps the sessions of the roles it served last open (apply_worker.cc). The notice receiver
    // follows its connection.
    void swap_connection(ApplySession& o);
    bool connected() const { return conn_.connected(); }
    PgConn& conn() { return conn_; }
    // The apply backend's pid (0: none).
    int backend_pid() const { return backend_pid_.load(); }

    // Who this session has run messages as since it connected: it never runs anyone else's
    // (dispatcher.h). nullopt: a fresh session.
    const std::optional<RunAs>& serves() const { return serves_; }

    // Whether the next commits are synchronous (durable, standbys included, when they return):
    // the database worker follows synchronous_standby_names under --durability auto, so this
    // may change between batches; it is set on the session before the next commit.
    void want_synchronous_commit(bool on) { want_sync_ = on; }
    // What the last commit of this session used.
    bool synchronous_commit() const { return sync_; }

    // Applies the items in order, as `as` (the session then serves it), committed when it returns;
    // where that commit ends is not read (Progress::kCommitUnknown). Throws PgError when the batch
    // failed as a whole (nothing of it committed) or the connection broke (then also
    // connection_lost).
    // timeout_ms: each message's time limit (the server's timer and registry deadline).
    std::vector<ApplyResult> apply(const std::vector<Pending>& items, const RunAs& as, uint32_t timeout_ms);

    // Dead-letters a message without running it, for the applier's verdict. *commit_lsn: at or
    // past the end of that commit. False: it was handled before.
    bool dead_letter(const Pending& p, Verdict v, Lsn* commit_lsn);

    // Runs a message that needs a top-level statement (atx.run_nonatomic).
    NonatomicResult run_nonatomic(const Pending& p, Lsn* commit_lsn);

    // What the server's apply registry says of the backend pid: "exited" with the message it was
    // running (*lsn), "running"/"idle" (it is alive), or nullopt (no record: the server
    // restarted, or the backend ended between messages).
    std::optional<std::string> registry_state(int pid, Lsn* lsn);

    // Thread-safe: makes a wait for results in this session give up (the connection is then
    // closed by the thread that uses it; the server ends the statement when it notices).
    void abandon() { abandon_ = true; }

    // The server's generation when this session connected (kServerGenerationSql): a different
    // one after a reconnect means the server restarted (a backend that dies abruptly makes the
    // postmaster restart every process and run crash recovery).
    const std::string& server_start() const { return server_start_; }

private:
    void set_synchronous_commit();

    PgConn conn_;
    SessionSettings settings_;
    bool want_sync_ = false;
    bool sync_ = false;
    std::optional<RunAs> serves_;
    std::string server_start_;
    std::atomic<int> backend_pid_{0};
    std::atomic<bool> abandon_{false};
};

// {a,b,c} array literal of the given texts (NULL for nullopt).
std::string pg_array_literal(const std::vector<std::optional<std::string>>& items);

}  // namespace atx::applier
