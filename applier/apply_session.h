// The ordinary libpq session of one database that executes messages (atx.apply_message) and
// moves the replication origin's progress in the same transaction.
//
// One batch = one transaction, sent in libpq pipeline mode in two round trips:
//   1. BEGIN; SELECT pg_current_xact_id(); N x EXECUTE atx_apply($payload)     -> outcomes
//   2. INSERT INTO atx.dead_letter ... (each permanent failure);
//      SELECT pg_replication_origin_xact_setup($last_lsn, now()); COMMIT
// pg_current_xact_id() forces an xid, so the commit record (which carries the origin progress) is
// written even when every message was a duplicate or a failure.
#pragma once

#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "message.h"
#include "pg_conn.h"
#include "replication_protocol.h"

namespace atx::applier {

struct ApplyItem {
    Lsn lsn = 0;
    std::string_view payload;  // the raw pg_atx message
};

// One row of atx.apply_message.
struct ApplyOutcome {
    std::optional<std::string> message_id;
    std::string status;  // applied | duplicate | failed
    std::string sqlstate;
    std::string error;
    std::string command;
    int64_t rows = 0;
};

struct DeadLetter {
    std::optional<std::string> message_id;
    Lsn source_lsn = 0;
    const Message* decoded = nullptr;  // null when the payload could not be decoded
    std::string_view payload;
    std::string sqlstate;
    std::string error;
    uint32_t attempts = 1;
    int64_t first_failed_unix_us = 0;
};

struct SessionSettings {
    uint32_t statement_timeout_ms = 60000;
    bool synchronous_commit = false;
};

class ApplySession {
public:
    // Connects with application_name 'atx-applier apply'.
    void connect(const std::string& base_conninfo, const std::string& dbname);
    void close();
    PgConn& conn() { return conn_; }

    // Session settings, pg_replication_origin_session_setup(origin), PREPARE of apply_message.
    void setup(const SessionSettings& s, const std::string& origin);

    // pg_replication_origin_progress(origin, flush); nullopt when the origin has no progress.
    std::optional<Lsn> origin_progress(bool flush);

    // Round trip 1. On return the transaction is open (call commit or rollback). Throws PgError
    // when anything but an apply_message status fails (the transaction is then rolled back).
    std::vector<ApplyOutcome> begin_and_apply(const std::vector<ApplyItem>& items);
    // Round trip 2. Throws PgError (the transaction is then rolled back) unless COMMIT succeeded.
    void commit(const std::vector<DeadLetter>& dead, Lsn last_lsn);
    // Rolls back the open transaction, if any. Throws PgError when the connection is gone.
    void rollback();

    // Thread-safe: cancels the statement in progress (used by shutdown after a grace period).
    void request_cancel();

    // Called about every 200 ms while a batch waits for the server (a statement blocked on a
    // lock, a slow statement): the worker keeps answering the walsender from here, or the
    // replication connection would hit wal_sender_timeout during a long apply.
    void set_wait_callback(std::function<void()> f) { on_wait_ = std::move(f); }

private:
    PgConn conn_;
    std::string origin_;
    std::mutex cancel_mu_;
    PGcancel* cancel_ = nullptr;
    std::function<void()> on_wait_;
};

// JSON array describing a message's parameters (for atx.dead_letter.params).
std::string params_json(const Message& m);

}  // namespace atx::applier
