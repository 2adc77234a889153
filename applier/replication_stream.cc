// The replication connection loop; see replication_stream.h.
#include "replication_stream.h"

#include <sys/select.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

namespace atx::applier {

void ReplicationStream::connect(const std::string& base_conninfo, const std::string& dbname)
{
    close();
    conn_.connect(base_conninfo,
                  {{"dbname", dbname}, {"replication", "database"}, {"application_name", "atx-applier"}});
}

ReplicationStream::Identity ReplicationStream::identify()
{
    PgResult r(PQexec(conn_.get(), "IDENTIFY_SYSTEM"));
    if (!r || PQresultStatus(r.get()) != PGRES_TUPLES_OK || PQntuples(r.get()) != 1)
        throw conn_.error_from(r.get(), "IDENTIFY_SYSTEM");
    Identity id;
    id.system_id = field(r.get(), 0, 0).value_or("");
    id.timeline = static_cast<uint32_t>(std::strtoul(field(r.get(), 0, 1).value_or("0").c_str(), nullptr, 10));
    return id;
}

void ReplicationStream::start(const std::string& slot, Lsn start)
{
    // Slot names are [a-z0-9_] (checked by the server), so the identifier needs no quoting.
    const std::string sql =
        "START_REPLICATION SLOT " + slot + " LOGICAL " + format_lsn(start) + " (\"format\" 'binary')";
    PgResult r(PQexec(conn_.get(), sql.c_str()));
    if (!r || PQresultStatus(r.get()) != PGRES_COPY_BOTH)
        throw conn_.error_from(r.get(), "START_REPLICATION");
    streaming_ = true;
}

std::optional<std::string> ReplicationStream::try_get()
{
    char* buf = nullptr;
    const int n = PQgetCopyData(conn_.get(), &buf, 1);
    if (n > 0) {
        std::string out(buf, static_cast<size_t>(n));
        PQfreemem(buf);
        return out;
    }
    if (n == 0)
        return std::nullopt;
    streaming_ = false;
    if (n == -1) {
        // The server ended the copy: collect its final result for the error text.
        PgResult r(PQgetResult(conn_.get()));
        if (r && PQresultStatus(r.get()) != PGRES_COMMAND_OK)
            throw conn_.error_from(r.get(), "replication stream ended");
        throw PgError("replication stream ended by the server", "08006", true);
    }
    throw conn_.error_from(nullptr, "reading the replication stream");
}

std::optional<std::string> ReplicationStream::read(std::chrono::milliseconds timeout)
{
    if (!streaming_)
        throw PgError("replication stream is not running", "08003", true);
    if (auto m = try_get())
        return m;
    // Nothing buffered: wait for the socket (pg_recvlogical does the same with select()).
    const int sock = PQsocket(conn_.get());
    if (sock < 0)
        throw PgError("replication connection has no socket", "08006", true);
    fd_set rfds;
    FD_ZERO(&rfds);
    FD_SET(sock, &rfds);
    struct timeval tv;
    tv.tv_sec = static_cast<long>(timeout.count() / 1000);
    tv.tv_usec = static_cast<long>((timeout.count() % 1000) * 1000);
    const int rc = select(sock + 1, &rfds, nullptr, nullptr, &tv);
    if (rc < 0) {
        if (errno == EINTR)
            return std::nullopt;
        throw PgError(std::string("select() on the replication socket failed: ") + std::strerror(errno), "08006", true);
    }
    if (rc == 0)
        return std::nullopt;
    if (PQconsumeInput(conn_.get()) == 0)
        throw conn_.error_from(nullptr, "reading the replication stream");
    return try_get();
}

void ReplicationStream::send_status(Lsn write, Lsn flush, Lsn apply)
{
    const std::string msg = build_status_update(write, flush, apply, pg_now(), false);
    if (PQputCopyData(conn_.get(), msg.data(), static_cast<int>(msg.size())) <= 0 || PQflush(conn_.get()) != 0)
        throw conn_.error_from(nullptr, "sending a standby status update");
}

void ReplicationStream::close()
{
    if (conn_.connected() && streaming_ && PQstatus(conn_.get()) == CONNECTION_OK) {
        // Polite end of the copy; the connection is closed right after anyway.
        PQputCopyEnd(conn_.get(), nullptr);
        PQflush(conn_.get());
    }
    streaming_ = false;
    conn_.close();
}

}  // namespace atx::applier
