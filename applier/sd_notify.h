// systemd readiness and watchdog notifications (libsystemd's sd_notify). Without NOTIFY_SOCKET in
// the environment (foreground, containers, tools/atx up) every call is a no-op.
//
//   READY=1      once every database's worker has made its first connection attempt (streaming or
//                not: a server that is down at boot must not make systemd fail the start; the
//                daemon retries by itself, and /readyz tells whether it streams)
//   WATCHDOG=1   every WATCHDOG_USEC/2 from the main loop, only while every worker ticks
//   STATUS=...   a one-line summary (per database state)
//   STOPPING=1   when shutdown starts
#pragma once

#include <chrono>
#include <string>

namespace atx::applier::sd {

void ready(const std::string& status);
void status(const std::string& status);
void watchdog();
void stopping();
// The watchdog interval systemd expects (WATCHDOG_USEC for this pid), or 0 when none.
std::chrono::microseconds watchdog_interval();

}  // namespace atx::applier::sd
