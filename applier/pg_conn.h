// Small RAII layer over libpq shared by the replication stream and the apply session.
//
// Every failure is a PgError carrying the SQLSTATE (empty when the server sent none) and whether
// the connection itself is gone (the worker then tears down and reconnects).
#pragma once

#include <libpq-fe.h>

#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace atx::applier {

class PgError : public std::runtime_error {
public:
    PgError(std::string message, std::string sqlstate, bool connection_lost)
        : std::runtime_error(std::move(message)), sqlstate(std::move(sqlstate)), connection_lost(connection_lost)
    {
    }
    std::string sqlstate;
    bool connection_lost;
};

struct PgResultDeleter {
    void operator()(PGresult* r) const { PQclear(r); }
};
using PgResult = std::unique_ptr<PGresult, PgResultDeleter>;

// A text parameter; nullopt is SQL NULL.
using TextParam = std::optional<std::string>;

class PgConn {
public:
    PgConn() = default;
    ~PgConn() { close(); }
    PgConn(const PgConn&) = delete;
    PgConn& operator=(const PgConn&) = delete;

    // Connects with `base` (a conninfo string or URI, may be empty) expanded first, then the given
    // keyword/value pairs on top (so dbname, replication and application_name always win).
    void connect(const std::string& base, const std::vector<std::pair<std::string, std::string>>& over);
    void close();
    void swap(PgConn& o) noexcept
    {
        std::swap(conn_, o.conn_);
        std::swap(busy_, o.busy_);
        std::swap(sent_, o.sent_);
    }
    bool connected() const { return conn_ != nullptr; }
    PGconn* get() const { return conn_; }

    // Runs one statement (extended protocol when params are given, simple otherwise) and checks
    // that it returned `want` (PGRES_TUPLES_OK or PGRES_COMMAND_OK). Throws PgError otherwise.
    PgResult exec(const std::string& sql, const std::vector<TextParam>& params = {},
                  ExecStatusType want = PGRES_TUPLES_OK);
    // Single value of a one-row result; nullopt for NULL or no row.
    std::optional<std::string> scalar(const std::string& sql, const std::vector<TextParam>& params = {});

    // Asynchronous use, for work the caller's loop must not wait for: send() starts sql (simple
    // protocol, no parameters) and returns; poll() reads what has arrived without blocking and
    // returns true once the last result is in (throwing PgError if any result failed), false
    // while the statement runs. One statement at a time.
    void send(const std::string& sql);
    bool poll();
    bool busy() const { return busy_; }

    // Builds a PgError from a failed result (or the connection's message when r is null).
    PgError error_from(const PGresult* r, const std::string& context) const;

private:
    PGconn* conn_ = nullptr;
    bool busy_ = false;
    std::string sent_;  // the statement in flight, for errors
};

// Field accessor: nullopt for NULL.
inline std::optional<std::string> field(const PGresult* r, int row, int col)
{
    if (PQgetisnull(r, row, col))
        return std::nullopt;
    return std::string(PQgetvalue(r, row, col), static_cast<size_t>(PQgetlength(r, row, col)));
}

// Quotes a conninfo/SQL literal value: 'it''s'.
std::string sql_literal(const std::string& s);

}  // namespace atx::applier
