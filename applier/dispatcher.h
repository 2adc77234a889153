// Which apply session runs what (pure and thread-safe; tests/unit/test_dispatcher.cc).
//
// Every message belongs to a lane: the backend session that emitted it, or for a nested emit
// the message that emitted it. A lane's messages run in order, one batch at a time; different
// lanes run in parallel on the apply sessions, in any order. So a message that waits on a lock,
// sleeps or is retried holds up only the messages of its own lane (docs/applier.md).
//
// Fairness and budgets: ready lanes are served round robin; a role may occupy at most
// role_budget regular sessions at once, so one role's stuck messages cannot take them all.
// Lanes whose next message is a nested atx_exec (its parent waits for it in another session)
// may also go to the nested pool, which exists so that such waits can always be served.
//
// Poison messages: when an apply backend is lost (killed, crashed, out of memory) while a batch
// runs, every message of that batch becomes a suspect. Suspects run alone, one at a time per
// database; a loss while a suspect runs alone counts against it, and the caller dead-letters it
// once it reaches the limit. Suspicion survives clear() (a server crash ends the stream too).
// A connection that simply went is only counted once a reconnect shows the server restarted.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "progress.h"

namespace atx::applier {

using Clock = std::chrono::steady_clock;

struct IdHash {
    size_t operator()(const Id& id) const noexcept;
};

// One message waiting in its lane.
struct Pending {
    Lsn start = 0;
    Lsn end = 0;
    Id id{};
    Id lane{};
    uint32_t role_oid = 0;
    std::string role_name;
    uint8_t depth = 0;
    bool waited = false;          // an atx_exec caller waits
    int64_t emit_time = 0;        // PostgreSQL TimestampTz (microseconds since 2000)
    uint32_t attempts = 0;        // failed (transient) attempts so far
    int64_t first_failed_us = 0;  // unix microseconds of the first failure, 0: none
    uint32_t losses = 0;          // apply backends lost while it ran alone
    bool suspect = false;
};

enum class WorkerKind { Regular, Nested };

// A lane leased to one worker: its next messages, in order.
struct Batch {
    Id lane{};
    uint32_t role_oid = 0;
    bool suspect = false;  // a suspect running alone
    std::vector<Pending> items;
};

class Dispatcher {
public:
    struct Options {
        size_t batch_size = 500;
        size_t role_budget = 2;
    };
    explicit Dispatcher(Options o) : opt_(o) {}

    // A message arrived (in stream order).
    void add(Pending p);
    // The next batch this worker may run, waiting up to `wait`; nullopt when there is none (or
    // after stop()).
    std::optional<Batch> take(WorkerKind kind, std::chrono::milliseconds wait);

    // The first n messages of b were handled (applied, dead-lettered, found handled before);
    // the rest go back to the front of their lane.
    void done(const Batch& b, size_t n);
    // The first n were handled, the next one failed transiently: it is retried at `when`
    // (now_us: the time of its failure), after its lane waited.
    void retry_later(const Batch& b, size_t n, Clock::time_point when, int64_t now_us);
    // b could not run (its SQL failed as a whole, the applier stops): back to its lane, not
    // before `when`.
    void release(const Batch& b, Clock::time_point when);
    // The first n were handled; the rest could not run: back to their lane, not before `when`.
    void release_after(const Batch& b, size_t n, Clock::time_point when);
    // The apply backend was lost while b ran: a suspect that ran alone has one more loss (the
    // worker dead-letters it instead of running it once it has enough); the messages of any
    // other batch become suspects. Everything goes back to its lane.
    void lost(const Batch& b);
    // b's connection went without the server saying why (see ApplySession::told_shutdown): a
    // backend that died (killed, crashed, out of memory) restarts the server, a network drop
    // does not. b goes back to its lane now; which of the two it was is settled later.
    void lost_unexplained(const Batch& b, const std::string& server_start);
    // A session connected to the server that started at server_start: an unexplained loss
    // under another start counts as lost(); the others are forgotten.
    void settle(const std::string& server_start);

    // Giving a batch back (done, retry_later, release, lost...) does not wake the waiting
    // workers: the worker that gave it back calls take() next and takes what it freed itself;
    // take() wakes the others only when more than it took is ready. Waking them at every
    // give-back made an idle worker race the one that had finished for its next batch, a
    // thread handoff per batch (on a saturated host, milliseconds each). A worker that does not
    // come back to take() (it reconnects or exits) calls wake_others() instead.
    void wake_others();

    // A new stream: drop every lane (suspicion is kept).
    void clear();
    // Wake every waiting worker; take() returns nullopt from now on until clear().
    void stop();

    size_t queued() const;
    size_t in_flight() const;
    size_t suspects() const;
    // Emit time of the oldest queued message (0: none).
    int64_t oldest_emit() const;
    // A lane whose next message is a nested atx_exec waits while every worker is busy.
    bool nested_waiting() const;

private:
    struct Lane {
        std::deque<Pending> q;
        uint32_t role_oid = 0;
        bool leased = false;
        Clock::time_point not_before{};
    };
    struct Suspicion {
        uint32_t losses = 0;
    };
    struct Unexplained {
        std::vector<Id> ids;
        bool suspect = false;  // ids[0] ran alone
        uint32_t losses = 0;   // of ids[0] before this one
        std::string server_start;
    };
    void suspect_locked(const std::vector<Id>& ids, bool alone, uint32_t losses);

    bool eligible(const Lane& l, WorkerKind kind) const;
    bool any_eligible_locked() const;
    void requeue(const Id& lane_id, Lane& l);
    void promote_due(Clock::time_point now);
    void give_back(const Batch& b, size_t from, Clock::time_point when);

    Options opt_;
    mutable std::mutex mu_;
    std::condition_variable cv_;
    std::unordered_map<Id, Lane, IdHash> lanes_;
    std::deque<Id> ready_;                         // lanes with messages, not leased, due
    std::multimap<Clock::time_point, Id> delayed_;  // lanes waiting for a retry time
    std::map<uint32_t, size_t> role_busy_;          // regular workers per role
    std::unordered_map<Id, Suspicion, IdHash> suspicion_;
    std::vector<Unexplained> unexplained_;
    bool suspect_running_ = false;
    size_t in_flight_ = 0;
    bool wake_pending_ = false;  // a give-back may have made work the waiting workers can take
    bool stopped_ = false;
};

}  // namespace atx::applier
