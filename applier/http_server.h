// The metrics / health HTTP listener of atx-applier (cpp-httplib, Debian's libcpp-httplib-dev).
//
//   GET /metrics  Prometheus text format (metrics().render())
//   GET /healthz  200 "alive" while the main loop and every worker thread tick, else 503 + reason
//   GET /readyz   200 "ready" when every database streams with lag below --ready-max-lag-seconds,
//                 else 503 + the reason per database
// Two threads serve requests; a scrape never takes a lock a worker holds while applying.
#pragma once

#include <memory>
#include <string>
#include <thread>

namespace atx::applier {

struct ListenAddress {
    std::string host;
    int port = 0;
};

// Parses "host:port", "[v6]:port" or ":port" (all interfaces). Throws std::invalid_argument.
ListenAddress parse_listen(const std::string& s);

class HttpServer {
public:
    HttpServer(ListenAddress addr, double ready_max_lag_s, double stale_after_s);
    ~HttpServer();
    // Binds (exclusively: no other process can listen on the same address) and starts serving in
    // a thread. Throws std::runtime_error when the address cannot be bound.
    void start();
    void stop();
    int port() const { return bound_port_; }
    std::string address() const;  // host:port as bound ([v6]:port), the port resolved when 0 was asked

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
    ListenAddress addr_;
    double ready_max_lag_s_, stale_after_s_;
    int bound_port_ = 0;
    std::thread thread_;
};

}  // namespace atx::applier
