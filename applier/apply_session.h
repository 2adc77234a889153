// One apply session: an ordinary libpq connection whose backend runs atx.apply_batch.
//
// A batch is one round trip in pipeline mode, two statements, each its own transaction:
//   SELECT * FROM atx.apply_batch($lsns, $attempts, $first_failed, $max_attempts, $timeout, $wake)
//   SELECT pg_current_wal_insert_lsn()   -- at or past the end of that commit record
// The server reads each message from its own WAL by its start LSN, applies it as its caller and
// records it in atx.applied in the same transaction; the applier sends no payload at all.
#pragma once

#include <cstdint>
#include <mutex>
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
    // applied | duplicate | already | dead | retry | nonatomic | skipped | rejected
    std::string status;
    std::string sqlstate;
    std::string error;
    std::string failure;  // permanent | transient | timeout | cancelled | needs top level
    std::string command;
    int64_t rows = 0;
};

struct SessionSettings {
    uint32_t lock_timeout_ms = 10000;
    uint32_t statement_timeout_ms = 60000;  // per message, enforced by apply_batch
    uint32_t max_attempts = 8;
    bool wake_at_commit = true;  // atx_exec callers are woken by the commit itself
};

// Changes when the server restarts, also by crash recovery (the postmaster keeps its start
// time then, but recovery discards the statistics, which resets pg_stat_wal.stats_reset).
inline constexpr const char* kServerGenerationSql =
    "pg_catalog.pg_postmaster_start_time()::pg_catalog.text OPERATOR(pg_catalog.||) ' ' OPERATOR(pg_catalog.||) "
    "COALESCE((SELECT stats_reset::pg_catalog.text FROM pg_catalog.pg_stat_wal), '')";

class ApplySession {
public:
    // Connects with application_name 'atx-applier apply <name>' (operators and tests find a
    // session's backend by it) and applies the settings.
    void connect(const std::string& base_conninfo, const std::string& dbname, const SessionSettings& s,
                 const std::string& name);
    void close();
    bool connected() const { return conn_.connected(); }
    PgConn& conn() { return conn_; }

    // Whether the next commits are synchronous (durable, standbys included, when they return):
    // the database worker follows synchronous_standby_names under --durability auto, so this
    // may change between batches; it is set on the session before the next commit.
    void want_synchronous_commit(bool on) { want_sync_ = on; }
    // What the last commit of this session used.
    bool synchronous_commit() const { return sync_; }

    // Applies the items in order. *commit_lsn: an LSN at or past the end of the commit.
    // Throws PgError when the batch failed as a whole (nothing of it committed) or the
    // connection broke (then also connection_lost).
    std::vector<ApplyResult> apply(const std::vector<Pending>& items, Lsn* commit_lsn);

    // Dead-letters a message without running it (the applier's own verdict). *commit_lsn: at or
    // past the end of that commit. False: it was handled before.
    bool dead_letter(const Pending& p, const std::string& sqlstate, const std::string& error, Lsn* commit_lsn);

    // Runs a message that needs a top-level statement (atx.run_nonatomic). Returns its status:
    // applied | dead | already | retry (nothing ran) | in doubt (the run died half way).
    ApplyResult run_nonatomic(const Pending& p, Lsn* commit_lsn);

    // Thread-safe: cancels the statement in progress (shutdown after a grace period).
    void request_cancel();

    // Why a connection went: did the server say it was shutting this session down (57P01
    // pg_terminate_backend or a shutdown, 57P02 another process crashed, 57P03) before it
    // closed? Set by the notice or error that said so; cleared by connect().
    bool told_shutdown() const { return told_shutdown_; }
    void note_shutdown_sqlstate(const std::string& sqlstate);
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
    bool told_shutdown_ = false;
    std::string server_start_;
    std::mutex cancel_mu_;
    PGcancel* cancel_ = nullptr;
};

// {a,b,c} array literal of the given texts (NULL for nullopt).
std::string pg_array_literal(const std::vector<std::optional<std::string>>& items);

}  // namespace atx::applier
