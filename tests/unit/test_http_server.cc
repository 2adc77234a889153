// parse_listen (the --http-listen value) and the listener's exclusive bind.
#include <catch2/catch.hpp>

#include <stdexcept>
#include <string>

#include <httplib.h>

#include "http_server.h"

using namespace atx::applier;

TEST_CASE("parse_listen accepts host:port, [v6]:port and :port", "[http]")
{
    struct Case {
        const char* in;
        const char* host;
        int port;
    };
    const Case cases[] = {
        {"127.0.0.1:9478", "127.0.0.1", 9478},
        {"0.0.0.0:0", "0.0.0.0", 0},
        {"localhost:65535", "localhost", 65535},
        {"[::1]:9478", "::1", 9478},
        {"[::]:80", "::", 80},
        {":9478", "0.0.0.0", 9478},  // all interfaces
    };
    for (const auto& c : cases) {
        INFO(c.in);
        const ListenAddress a = parse_listen(c.in);
        CHECK(a.host == c.host);
        CHECK(a.port == c.port);
    }
}

TEST_CASE("parse_listen refuses what is not host:port", "[http]")
{
    const char* bad[] = {
        "",         "9478",     "off",      "127.0.0.1", "127.0.0.1:", "host:65536", "host:-1",
        "host:+80", "host: 80", "host:80 ", "host:12a",  "host:0x50",  "[::1]",      "host:99999999999"};
    for (const char* b : bad) {
        INFO("'" << b << "'");
        CHECK_THROWS_AS(parse_listen(b), std::invalid_argument);
    }
}

TEST_CASE("the listener binds exclusively, and a restart can bind again at once", "[http]")
{
    HttpServer first(parse_listen("127.0.0.1:0"), 60, 60);
    first.start();
    const int port = first.port();
    REQUIRE(port > 0);
    CHECK(first.address() == "127.0.0.1:" + std::to_string(port));
    {
        httplib::Client client("127.0.0.1", port);
        auto res = client.Get("/");
        REQUIRE(res);
        CHECK(res->status == 200);
    }

    // A second listener on the same address (another applier) must fail, not share the port.
    HttpServer second(parse_listen("127.0.0.1:" + std::to_string(port)), 60, 60);
    CHECK_THROWS_WITH(second.start(),
                      Catch::Contains("cannot bind the HTTP listener to 127.0.0.1:" + std::to_string(port)));
    {
        httplib::Client client("127.0.0.1", port);
        auto res = client.Get("/");
        REQUIRE(res);
        CHECK(res->status == 200);  // the first one still answers
    }

    // Once the first stops, the same address binds at once (connections in TIME_WAIT do not hold it).
    first.stop();
    HttpServer restarted(parse_listen("127.0.0.1:" + std::to_string(port)), 60, 60);
    CHECK_NOTHROW(restarted.start());
    httplib::Client client("127.0.0.1", port);
    auto res = client.Get("/");
    REQUIRE(res);
    CHECK(res->status == 200);
}

TEST_CASE("address() brackets an IPv6 host", "[http]")
{
    HttpServer s(parse_listen("[::1]:0"), 60, 60);
    try {
        s.start();
    } catch (const std::runtime_error&) {
        WARN("SKIPPED: no IPv6 loopback on this host");
        return;
    }
    CHECK(s.address() == "[::1]:" + std::to_string(s.port()));
}
