// The replication connection of one database: START_REPLICATION on the pg_atx slot and the
// CopyBoth loop, shaped like PostgreSQL's pg_recvlogical.c (asynchronous PQgetCopyData, select()
// on PQsocket with a timeout, standby status updates written with PQputCopyData + PQflush).
//
// The stream only moves bytes; what to confirm is decided by the database worker.
#pragma once

#include <chrono>
#include <optional>
#include <string>

#include "pg_conn.h"
#include "replication_protocol.h"

namespace atx::applier {

class ReplicationStream {
public:
    // Connects with replication=database and application_name=atx-applier.
    void connect(const std::string& base_conninfo, const std::string& dbname);
    // IDENTIFY_SYSTEM: which cluster and timeline this is (a failover changes the timeline).
    struct Identity {
        std::string system_id;
        uint32_t timeline = 0;
    };
    Identity identify();
    // START_REPLICATION SLOT <slot> LOGICAL <start> ("format" 'binary'). Throws PgError.
    void start(const std::string& slot, Lsn start);

    // Next CopyData message, waiting for the socket at most `timeout` (0: only what is already
    // buffered or readable now). nullopt when nothing arrived in time. Throws PgError when the
    // server ends the stream or the connection breaks.
    std::optional<std::string> read(std::chrono::milliseconds timeout);

    // Sends an 'r' standby status update. Throws PgError.
    void send_status(Lsn write, Lsn flush, Lsn apply);

    // Ends the copy (best effort) and closes the connection.
    void close();
    bool connected() const { return conn_.connected(); }

private:
    std::optional<std::string> try_get();
    PgConn conn_;
    bool streaming_ = false;
};

}  // namespace atx::applier
