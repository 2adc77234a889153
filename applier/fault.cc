// Test-only fault points; see fault.h.
#include "fault.h"

#ifdef ATX_FAULT_INJECTION

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>

#include <spdlog/spdlog.h>

namespace atx::applier {

namespace {

struct FaultSpec {
    std::string point;  // empty: no fault armed
    long nth = 1;
};

const FaultSpec& spec()
{
    static const FaultSpec s = [] {
        FaultSpec f;
        const char* env = std::getenv("ATX_FAULT");
        if (!env || !*env)
            return f;
        std::string v(env);
        const size_t colon = v.find(':');
        f.point = v.substr(0, colon);
        if (colon != std::string::npos) {
            f.nth = std::strtol(v.c_str() + colon + 1, nullptr, 10);
            if (f.nth < 1)
                f.nth = 1;
        }
        return f;
    }();
    return s;
}

std::atomic<long> g_hits{0};

}  // namespace

bool broken(const char* name)
{
    static const std::string armed = [] {
        const char* env = std::getenv("ATX_BREAK");
        if (env && *env)
            spdlog::critical("event=deliberately_broken switch={} warning=\"test-only: this applier is wrong on "
                             "purpose\"",
                             env);
        return std::string(env ? env : "");
    }();
    return !armed.empty() && armed == name;
}

void fault_point(const char* name)
{
    const FaultSpec& f = spec();
    if (f.point.empty() || f.point != name)
        return;
    if (g_hits.fetch_add(1) + 1 != f.nth)
        return;
    spdlog::critical("event=fault_injected point={} hit={} action=SIGKILL", name, f.nth);
    spdlog::default_logger()->flush();
    ::kill(::getpid(), SIGKILL);
    ::_exit(137);  // not reached
}

}  // namespace atx::applier

#endif
