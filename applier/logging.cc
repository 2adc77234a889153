// spdlog setup with a reopenable file sink; see logging.h.
#include "logging.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <mutex>
#include <stdexcept>

#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/base_sink.h>
#include <spdlog/sinks/stdout_sinks.h>

#include "utf8.h"

namespace atx::applier {

namespace {

// A file sink whose file can be reopened under the sink's own lock (spdlog's basic_file_sink
// cannot), so that SIGHUP after logrotate needs no logger swap while other threads log.
class ReopenableFileSink final : public spdlog::sinks::base_sink<std::mutex> {
public:
    explicit ReopenableFileSink(std::string path) : path_(std::move(path))
    {
        file_ = std::fopen(path_.c_str(), "a");
        if (!file_)
            throw std::runtime_error("cannot open log file " + path_ + ": " + std::strerror(errno));
    }
    ~ReopenableFileSink() override
    {
        if (file_)
            std::fclose(file_);
    }

    void reopen()
    {
        std::lock_guard<std::mutex> lock(mutex_);
        FILE* f = std::fopen(path_.c_str(), "a");
        if (!f) {
            std::fprintf(stderr, "atx-applier: cannot reopen log file %s: %s\n", path_.c_str(), std::strerror(errno));
            return;
        }
        std::fclose(file_);
        file_ = f;
    }

protected:
    void sink_it_(const spdlog::details::log_msg& msg) override
    {
        spdlog::memory_buf_t buf;
        formatter_->format(msg, buf);
        std::fwrite(buf.data(), 1, buf.size(), file_);
        std::fflush(file_);  // one line per event; lines must survive a SIGKILL
    }
    void flush_() override { std::fflush(file_); }

private:
    std::string path_;
    FILE* file_ = nullptr;
};

std::shared_ptr<ReopenableFileSink> g_file_sink;

}  // namespace

spdlog::level::level_enum parse_log_level(const std::string& name)
{
    if (name == "trace")
        return spdlog::level::trace;
    if (name == "debug")
        return spdlog::level::debug;
    if (name == "info")
        return spdlog::level::info;
    if (name == "warning" || name == "warn")
        return spdlog::level::warn;
    if (name == "error")
        return spdlog::level::err;
    if (name == "critical")
        return spdlog::level::critical;
    if (name == "off")
        return spdlog::level::off;
    throw std::invalid_argument("unknown log level '" + name + "' (trace, debug, info, warning, error, critical, off)");
}

void init_logging(const std::string& log_file, spdlog::level::level_enum level)
{
    std::shared_ptr<spdlog::logger> logger;
    if (log_file.empty()) {
        logger = std::make_shared<spdlog::logger>("atx", std::make_shared<spdlog::sinks::stderr_sink_mt>());
    } else {
        g_file_sink = std::make_shared<ReopenableFileSink>(log_file);
        logger = std::make_shared<spdlog::logger>("atx", g_file_sink);
    }
    logger->set_formatter(std::make_unique<spdlog::pattern_formatter>("%Y-%m-%dT%H:%M:%S.%fZ level=%l %v",
                                                                      spdlog::pattern_time_type::utc));
    logger->set_level(level);
    logger->flush_on(spdlog::level::trace);
    spdlog::set_default_logger(logger);
}

void reopen_log()
{
    if (g_file_sink)
        g_file_sink->reopen();
}

void set_log_level(spdlog::level::level_enum level) { spdlog::default_logger()->set_level(level); }

void shutdown_logging() { spdlog::default_logger()->flush(); }

std::string logq(std::string_view v)
{
    bool plain = !v.empty();
    for (size_t i = 0; i < v.size() && plain;) {
        const char c = v[i];
        uint32_t cp = 0;
        const size_t n = utf8_char(v, i, &cp);
        if (c == ' ' || c == '"' || c == '=' || c == '\\' || static_cast<unsigned char>(c) < 0x20 || c == 0x7f ||
            n == 0 || display_control(cp))
            plain = false;
        i += n ? n : 1;
    }
    if (plain)
        return std::string(v);
    std::string out = "\"";
    for (size_t i = 0; i < v.size();) {
        const char c = v[i];
        uint32_t cp = 0;
        const size_t n = utf8_char(v, i, &cp);
        char b[16];
        if (n == 0) {
            // Not UTF-8: the byte itself, escaped.
            std::snprintf(b, sizeof b, "\\x%02x", static_cast<unsigned>(static_cast<unsigned char>(c)));
            out += b;
            ++i;
            continue;
        }
        switch (c) {
        case '"': out += "\\\""; break;
        case '\\': out += "\\\\"; break;
        case '\n': out += "\\n"; break;
        case '\r': out += "\\r"; break;
        case '\t': out += "\\t"; break;
        default:
            if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
                std::snprintf(b, sizeof b, "\\x%02x", static_cast<unsigned>(static_cast<unsigned char>(c)));
                out += b;
            } else if (display_control(cp)) {
                std::snprintf(b, sizeof b, "\\u%04x", static_cast<unsigned>(cp));
                out += b;
            } else {
                out.append(v.substr(i, n));
            }
        }
        i += n;
    }
    out += '"';
    return out;
}

}  // namespace atx::applier
