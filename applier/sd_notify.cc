// sd_notify wrappers; see sd_notify.h.
#include "sd_notify.h"

#include <systemd/sd-daemon.h>

namespace atx::applier::sd {

void ready(const std::string& s) { sd_notifyf(0, "READY=1\nSTATUS=%s", s.c_str()); }
void status(const std::string& s) { sd_notifyf(0, "STATUS=%s", s.c_str()); }
void watchdog() { sd_notify(0, "WATCHDOG=1"); }
void stopping() { sd_notify(0, "STOPPING=1\nSTATUS=stopping"); }

std::chrono::microseconds watchdog_interval()
{
    uint64_t usec = 0;
    if (sd_watchdog_enabled(0, &usec) > 0)
        return std::chrono::microseconds(usec);
    return std::chrono::microseconds(0);
}

}  // namespace atx::applier::sd
