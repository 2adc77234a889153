// HTTP listener for /metrics, /healthz, /readyz; see http_server.h.
#include "http_server.h"

#include <atomic>
#include <chrono>
#include <stdexcept>
#include <thread>

#include <sys/socket.h>

#include <httplib.h>

#include "metrics.h"

namespace atx::applier {

ListenAddress parse_listen(const std::string& s)
{
    const size_t colon = s.rfind(':');
    if (colon == std::string::npos)
        throw std::invalid_argument("http-listen: '" + s + "' is not host:port (or 'off')");
    ListenAddress a;
    a.host = s.substr(0, colon);
    if (a.host.size() >= 2 && a.host.front() == '[' && a.host.back() == ']')
        a.host = a.host.substr(1, a.host.size() - 2);
    if (a.host.empty())
        a.host = "0.0.0.0";
    const std::string p = s.substr(colon + 1);
    // Digits only: std::stoi alone would take " 80" or "+80".
    if (p.empty() || p.size() > 5 || p.find_first_not_of("0123456789") != std::string::npos || std::stoi(p) > 65535)
        throw std::invalid_argument("http-listen: bad port in '" + s + "'");
    a.port = std::stoi(p);
    return a;
}

struct HttpServer::Impl {
    httplib::Server svr;
    std::atomic<bool> done{false};  // listen_after_bind returned
};

HttpServer::HttpServer(ListenAddress addr, double ready_max_lag_s, double stale_after_s)
    : impl_(std::make_unique<Impl>()), addr_(std::move(addr)), ready_max_lag_s_(ready_max_lag_s),
      stale_after_s_(stale_after_s)
{
}

HttpServer::~HttpServer() { stop(); }

void HttpServer::start()
{
    auto& svr = impl_->svr;
    svr.new_task_queue = [] { return new httplib::ThreadPool(2); };
    svr.set_keep_alive_max_count(10);
    svr.set_read_timeout(5, 0);
    svr.set_write_timeout(5, 0);
    svr.Get("/metrics", [](const httplib::Request&, httplib::Response& res) {
        res.set_content(metrics().render(), "text/plain; version=0.0.4; charset=utf-8");
    });
    svr.Get("/healthz", [this](const httplib::Request&, httplib::Response& res) {
        std::string why;
        res.status = metrics().healthy(stale_after_s_, &why) ? 200 : 503;
        res.set_content(why + "\n", "text/plain; charset=utf-8");
    });
    svr.Get("/readyz", [this](const httplib::Request&, httplib::Response& res) {
        std::string why;
        res.status = metrics().ready(ready_max_lag_s_, &why) ? 200 : 503;
        res.set_content(why + "\n", "text/plain; charset=utf-8");
    });
    // Bind exclusively. httplib's default sets SO_REUSEPORT, which lets a second applier on this
    // host bind the same address and the kernel then spreads scrapes between the two. SO_REUSEADDR
    // alone still lets a restart bind while old connections are in TIME_WAIT, but never a second
    // listener.
    svr.set_socket_options([](socket_t sock) {
        int yes = 1;
        (void)::setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
    });
    svr.Get("/", [](const httplib::Request&, httplib::Response& res) {
        res.set_content("atx-applier: /metrics /healthz /readyz\n", "text/plain; charset=utf-8");
    });
    if (addr_.port == 0) {
        bound_port_ = svr.bind_to_any_port(addr_.host);
        if (bound_port_ <= 0)
            throw std::runtime_error("cannot bind the HTTP listener to " + addr_.host + ":0");
    } else {
        if (!svr.bind_to_port(addr_.host, addr_.port))
            throw std::runtime_error("cannot bind the HTTP listener to " + addr_.host + ":" +
                                     std::to_string(addr_.port) +
                                     " (in use by another process? --http-listen off disables it)");
        bound_port_ = addr_.port;
    }
    thread_ = std::thread([this] {
        impl_->svr.listen_after_bind();
        impl_->done = true;
    });
    // httplib's stop() does nothing until the listening thread has started accepting, and that
    // thread would then accept forever: a stop() right after start() (a quick exit) must not hang.
    for (int i = 0; i < 5000 && !impl_->svr.is_running() && !impl_->done; ++i)
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
}

std::string HttpServer::address() const
{
    const bool v6 = addr_.host.find(':') != std::string::npos;
    return (v6 ? "[" + addr_.host + "]" : addr_.host) + ":" + std::to_string(bound_port_);
}

void HttpServer::stop()
{
    if (thread_.joinable()) {
        impl_->svr.stop();
        thread_.join();
    }
}

}  // namespace atx::applier
