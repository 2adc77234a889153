// The applier's replication stream and message decoding against a real server: a message written
// by atx_log in a transaction that rolls back arrives over START_REPLICATION as one 'w' frame
// ('M', the record's start LSN, the payload) whose payload decodes to what the caller passed. Needs the extension installed (tools/atx test
// installs it before running the unit tests).
#include <catch2/catch.hpp>

#include <chrono>
#include <thread>

#include "frame.h"
#include "live_cluster.h"
#include "message.h"
#include "pg_conn.h"
#include "replication_protocol.h"
#include "replication_stream.h"

using namespace atx;
using namespace atx::applier;
using namespace std::chrono_literals;

TEST_CASE("a rolled-back atx_log message streams and decodes", "[live]")
{
    test::LiveCluster cluster;
    PgConn sql;
    sql.connect(cluster.conninfo(), {{"dbname", "postgres"}});
    sql.exec("CREATE EXTENSION pg_atx", {}, PGRES_COMMAND_OK);
    const std::string slot = sql.scalar("SELECT atx.ensure_slot()").value();
    sql.exec("CREATE ROLE live_caller", {}, PGRES_COMMAND_OK);
    sql.exec("CREATE TABLE public.t(n int, s text)", {}, PGRES_COMMAND_OK);  // atx_log checks the statement
    sql.exec("GRANT INSERT ON public.t TO live_caller", {}, PGRES_COMMAND_OK);
    sql.exec("SET search_path = pg_catalog, public", {}, PGRES_COMMAND_OK);
    sql.exec("BEGIN", {}, PGRES_COMMAND_OK);
    sql.exec("SET LOCAL ROLE live_caller", {}, PGRES_COMMAND_OK);
    const std::string id =
        sql.scalar("SELECT atx_log('INSERT INTO t VALUES ($1, $2)', 42, 'it''s'::text)::text").value();
    sql.exec("ROLLBACK", {}, PGRES_COMMAND_OK);
    const std::string db_oid = sql.scalar("SELECT oid::text FROM pg_database WHERE datname = 'postgres'").value();

    ReplicationStream stream;
    stream.connect(cluster.conninfo(), "postgres");
    stream.start(slot, 0);

    std::optional<XLogData> frame;
    std::string raw;
    const auto deadline = std::chrono::steady_clock::now() + 20s;
    while (!frame && std::chrono::steady_clock::now() < deadline) {
        auto data = stream.read(200ms);
        if (!data)
            continue;
        raw = std::move(*data);
        auto msg = parse_copy_data(raw);
        if (auto* x = std::get_if<XLogData>(&msg))
            frame = *x;
    }
    REQUIRE(frame);
    REQUIRE(frame->payload.size() > 9);
    CHECK(frame->payload[0] == 'M');
    const Frame f = parse_frame(frame->payload);
    CHECK(f.start > 0);
    CHECK(f.start < frame->data_start);  // data_start: the end of the record

    DecodedPayload d = decode_payload(std::string(f.payload));
    CHECK(uuid_to_string(d.message.id) == id);
    CHECK(std::to_string(d.message.database_oid) == db_oid);
    CHECK(d.message.role_name == "live_caller");
    CHECK(d.message.statement == "INSERT INTO t VALUES ($1, $2)");
    REQUIRE(d.message.params.size() == 2);
    CHECK(d.message.params[0].type_name == "integer");
    CHECK(d.message.params[0].binary);
    CHECK(d.message.params[0].value == std::string("\0\0\0\x2a", 4));
    CHECK(d.message.params[1].type_name == "text");
    CHECK(d.message.params[1].value == "it's");
    CHECK(d.mac.size() == kMacSize);
    bool has_search_path = false;
    for (const auto& g : d.message.gucs)
        if (g.name == "search_path") {
            has_search_path = true;
            CHECK(g.value == "pg_catalog, public");
        }
    CHECK(has_search_path);
    stream.close();
}

TEST_CASE("PgConn::send and poll run a statement without blocking and report its error", "[live]")
{
    test::LiveCluster cluster;
    PgConn conn;
    conn.connect(cluster.conninfo(), {{"dbname", "postgres"}});

    const auto t0 = std::chrono::steady_clock::now();
    conn.send("SELECT pg_catalog.pg_sleep(0.5)");
    CHECK(conn.busy());
    CHECK_FALSE(conn.poll());  // returns at once while the server sleeps
    CHECK(std::chrono::steady_clock::now() - t0 < 300ms);
    CHECK_THROWS_AS(conn.send("SELECT 1"), PgError);  // one at a time
    while (!conn.poll())
        std::this_thread::sleep_for(10ms);
    CHECK(std::chrono::steady_clock::now() - t0 >= 500ms);
    CHECK_FALSE(conn.busy());

    conn.send("SELECT 1/0");
    PgError failed("", "", false);
    bool threw = false;
    try {
        while (!conn.poll())
            std::this_thread::sleep_for(10ms);
    } catch (const PgError& e) {
        failed = e;
        threw = true;
    }
    REQUIRE(threw);
    CHECK(failed.sqlstate == "22012");
    CHECK_FALSE(conn.busy());
    CHECK(conn.scalar("SELECT 'usable'") == std::optional<std::string>("usable"));  // nothing left over
}
