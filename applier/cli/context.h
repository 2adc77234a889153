// What every operator command shares: its options, the connections to the databases, the
// RocksDB view, output (human or --json) and the audit trail.
//
// Every session runs with search_path = pg_catalog, pg_temp (PgConn::connect) and every statement
// the commands send names its functions, tables and operators with their schema: a role with
// CREATE on some schema must not be able to capture a call made with the operator's rights.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "pg_conn.h"
#include "replication_protocol.h"
#include "state_reader.h"
#include "text.h"

namespace atx::applier::cli {

using json = nlohmann::ordered_json;

// Exit status of the operator commands (docs/operations.md).
constexpr int kOk = 0, kUsage = 1, kProblem = 2, kNotFound = 4;

class UsageError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// The options of all commands (each command defines the ones it takes; cli.cc).
struct Options {
    std::string conninfo;
    std::vector<std::string> dbs;  // empty: libpq's default database
    std::string state_dir;
    bool json_out = false;
    bool all = false;
    uint32_t limit = 100;
    std::string reason;
    std::string target;  // the positional argument of show, retry, discard, dead-letter
};

// One database: the connection and the names derived from it.
struct Db {
    std::string name;  // current_database()
    std::string oid;
    std::unique_ptr<PgConn> conn;
    std::string scope() const { return "db" + oid; }  // RocksDB scope (state_store.h)
    // atx.slot_name() of the server (one owner for the name); nullopt without the extension.
    std::optional<std::string> slot();

private:
    std::optional<std::optional<std::string>> slot_;
};

struct Context {
    Options opt;
    std::unique_ptr<StateReader> state;  // null without --state-dir or when unreadable
    std::string state_why;               // why it is null, when a state dir was given

    std::vector<std::string> db_names() const { return opt.dbs.empty() ? std::vector<std::string>{""} : opt.dbs; }
    Db connect(const std::string& dbname) const;
    std::vector<Db> connect_all() const;

    // Human text or the JSON document on stdout.
    void print(const json& j, const std::string& human) const;
};

// A single value; nullopt also when the query fails for any reason but a lost connection
// (missing privilege or extension).
std::optional<std::string> try_scalar(PgConn& conn, const std::string& sql, const std::vector<TextParam>& params = {});

json jstr(const std::optional<std::string>& v);
std::string iso_time(int64_t unix_us);
int64_t now_us();
json record_json(const DeliveryRecord& r);
std::string os_user();

// `printable` for a JSON string or number field ("-" for null).
std::string shown(const json& v, size_t max_bytes = 2000);

// Appends one JSON line to <state-dir>/operator-audit.jsonl and fsyncs it. Returns the path, or
// "" when there is no state dir (or it cannot be written: the reason goes to stderr).
std::string audit(const Context& c, json entry);

// The same audit text in the server log (RAISE LOG), so that it exists without a state dir.
// Control characters are escaped (no forged log lines). A failure is a warning on stderr.
void server_log(PgConn& conn, const std::string& text);

}  // namespace atx::applier::cli
