// Which apply session runs what (pure and thread-safe; tests/unit/test_dispatcher.cc).
//
// Every message belongs to a lane: the backend session that emitted it, or for a nested emit
// the message that emitted it. A lane's messages run in order, one batch at a time; different
// lanes run in parallel on the apply sessions, in any order. So a message that waits on a lock,
// sleeps or is retried holds up only the messages of its own lane (docs/applier.md).
//
// A batch holds consecutive messages of one lane that run as the same role and are charged to
// the same principal (RunAs): an apply session serves one RunAs from connect to close, and a
// batch of another RunAs gets a fresh session (apply_worker.cc), so that nothing one role's code
// leaves in a backend (settings, placeholders, plans, caches, memory) is ever used by another's.
// take() is fair between principals first (the lane whose principal holds the fewest sessions),
// then prefers lanes of the RunAs the asking session already serves.
//
// Budgets, by principal (the login that caused the work; docs/applier.md): a principal occupies
// at most role_budget regular sessions, at most nested_budget sessions of the nested pool, and
// holds at most nonatomic_per_principal of the nonatomic_total background workers at once. The
// nested pool serves only lanes whose next message is an atx_exec that a running message waits
// for (its parent is in flight): such waits can always be served, and nothing else takes them.
//
// Verdicts: a message the applier itself decided not to run (it overstayed its limit and its
// backend was terminated; its backend was lost too often while it ran) carries its verdict;
// batches stop before it, and it is then taken alone, for the worker to dead-letter it.
//
// Parking: a queued message that has waited longer than park_after behind a batch of its own
// lane or principal that has run that long (or behind its lane's retry wait) is handed out by
// park_candidates(); the database worker copies it into the server (atx.park) so that the slot
// can move past it, and marks it parked(). It stays in its lane and runs as any other, from its
// copy. A lane being parked is not taken meanwhile. A principal whose batch ran half that long
// counts as stalled for park_after afterwards, so that a backlog of slow messages is parked too. A lane whose last batch ran longer than
// park_after is slow: it gets batches of one message, and a message of it that has waited that
// long is parked before it runs (unless parking fails), so that a lane of slow messages holds the
// slot for one message's run at most.
//
// Poison messages of a crash: when an apply backend dies and the server restarts (a crash ends
// every backend, so which message did it cannot be seen), every message of the batches in flight
// becomes a suspect. Suspects run alone, one at a time per database; a loss while a suspect runs
// alone counts against it. Alone means with its own waited nested messages (its atx_exec calls,
// and theirs): they are part of its run, and kept from it they could only time out its wait, so a
// crash during the family's run counts against the suspect that started it. Suspicion survives clear() (a server crash ends the stream too). A
// connection that simply went is settled once a reconnect shows whether the server restarted.
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
#include <unordered_set>
#include <vector>

#include "apply_status.h"
#include "progress.h"

namespace atx::applier {

using Clock = std::chrono::steady_clock;

struct IdHash {
    size_t operator()(const Id& id) const noexcept;
};

// Who a message runs as, and who pays for it.
struct RunAs {
    uint32_t role_oid = 0;       // current_user at the call: what its statement runs as
    uint32_t principal_oid = 0;  // the login that caused it (common/message.h): budgets
    bool operator==(const RunAs& o) const { return role_oid == o.role_oid && principal_oid == o.principal_oid; }
    bool operator!=(const RunAs& o) const { return !(*this == o); }
};

// One message waiting in its lane.
struct Pending {
    Lsn start = 0;
    Lsn end = 0;
    Id id{};
    Id lane{};
    RunAs as;
    std::string role_name;
    uint8_t depth = 0;
    bool waited = false;          // an atx_exec caller waits
    int64_t emit_time = 0;        // PostgreSQL TimestampTz (microseconds since 2000)
    uint32_t attempts = 0;        // failed (transient) attempts so far
    int64_t first_failed_us = 0;  // unix microseconds of the first failure, 0: none
    uint32_t losses = 0;          // apply backends lost while it ran
    bool suspect = false;
    std::optional<Verdict> verdict;  // the applier's decision: dead-letter it, do not run it
    bool parked = false;             // copied into the server (atx.park): the slot may pass it
    bool park_tried = false;         // handed to atx.park (parked, or found handled)
    // Its atomic run said it needs a top-level one, which was deferred: it goes straight there
    // next time. Run again in the session, its statement would emit its nested messages once
    // more and hold a shared session for as long as it runs, on every deferral.
    bool top_level = false;
    Clock::time_point queued_at{};  // when it first reached its lane
};

enum class WorkerKind { Regular, Nested };

// A lane leased to one worker: its next messages, in order, all of one RunAs.
struct Batch {
    Id lane{};  // the lane it was taken for
    RunAs as;
    bool suspect = false;  // a suspect running alone
    bool family = false;   // that suspect's batch, or one of its nested messages' (suspect_family_)
    bool nested = false;   // taken by the nested pool
    std::vector<Pending> items;
};

class Dispatcher {
public:
    struct Options {
        size_t batch_size = 500;
        size_t role_budget = 2;      // regular sessions per principal
        size_t nested_budget = 16;   // nested-pool sessions per principal
        size_t nonatomic_total = 2;  // background workers for non-atomic messages, in all
        size_t nonatomic_per_principal = 1;
        uint32_t max_backend_losses = 2;           // attributed losses before a message is condemned
        std::chrono::milliseconds park_after{0};   // 0: never park
        std::chrono::milliseconds batch_delay{0};  // a lane with less than a batch waits this long
    };
    explicit Dispatcher(Options o) : opt_(o) {}

    // A message arrived (in stream order). False, and not added, when a copy of it (the same id
    // in the same lane, sent earlier in the stream) is queued or runs: a nested message is
    // emitted again by each attempt of its parent, and the copy's outcome is the first one's.
    // The caller counts the copy handled: it is later in the WAL than the first, which holds the
    // slot until it is handled. (Ids come from atx_log: only it can write the pg_atx origin.)
    bool add(Pending p);
    // The next batch this worker may run, waiting up to `wait`; nullopt when there is none (or
    // after stop()). prefer: the RunAs the worker's session already serves, if any.
    std::optional<Batch> take(WorkerKind kind, std::optional<RunAs> prefer, std::chrono::milliseconds wait);

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

    // The apply backend running b exited while it ran message `id` (the server's registry says
    // so; the server did not restart): one more loss for that message, and once it has
    // max_backend_losses its verdict is BackendLost. b goes back to its lane.
    void lost_running(const Batch& b, const Id& id);
    // The applier decided message `id` of b must not run (v); b goes back to its lane, and the
    // message will be taken alone for its dead letter.
    void condemn(const Batch& b, const Id& id, Verdict v);
    // The apply backend was lost while b ran and the server restarted: a suspect that ran alone
    // has one more loss (and a verdict at the limit); the messages of any other batch become
    // suspects. Everything goes back to its lane.
    void lost(const Batch& b);
    // b's connection went and nothing says why (the server's registry has no record of it): a
    // backend that died abruptly restarts the server, a network drop does not. b goes back to its
    // lane now; which of the two it was is settled later.
    void lost_unexplained(const Batch& b, const std::string& server_start);
    // A session connected to the server that started at server_start: an unexplained loss
    // under another start counts as lost(); the others are forgotten.
    void settle(const std::string& server_start);

    // Messages to park (at most max): queued since before `before` (not parked, not an atx_exec
    // child its running parent waits for unless that parent was parked), whose lane or principal
    // has had a batch running since before `before`, or whose lane waits for a retry time; and
    // messages of batches leased since before `before` (they run that long: parked, the slot
    // passes them while they run, and their apply takes the parked record over). The lanes of
    // queued candidates are not taken until parked() or park_failed(). A running parent holds the
    // slot before its children, so parking them would move nothing; once the parent was parked,
    // its children are the oldest messages the slot waits for.
    std::vector<Pending> park_candidates(Clock::time_point before, size_t max);
    // Of the candidates (tried, by start LSN), these were parked; the lanes being parked may be
    // taken again.
    void parked(const std::vector<Lsn>& starts, const std::vector<Lsn>& tried);
    // atx.park failed: the lanes may be taken again, and for a minute slow lanes do not wait for
    // their messages to be parked.
    void park_failed();
    // Parked messages not handled yet.
    size_t parked_queued() const;

    // Where the message whose WAL record starts at `start` is, for the log line of a slot that
    // stays behind one message (database_worker.cc, "slot_held"): queued (its lane, its place,
    // what keeps the lane from being taken), running, or nowhere here.
    std::string where(Lsn start) const;

    // A background worker for a non-atomic message of principal, run from lane: false when the
    // principal or the database already holds its share, or when principals refused earlier
    // wait for the free ones. Refused principals queue, those holding fewer workers first, then
    // the one that used less worker time lately, then the one served longest ago, then the
    // earliest refused: a freed worker goes to them, and their refused lanes are made due at
    // once. Without the queue two logins whose chains asked again the moment they gave a worker
    // back held both for minutes, and a third login's message waited 28 s; without the worker
    // time, a login whose lane sends short non-atomic messages one after another waited for a
    // release behind each of them, as long as the others' longest runs (issue 21). Give a worker
    // back with release_nonatomic(), naming the lane it ran from: when more of that lane's
    // messages follow (in its batch or queued) and no waiter is ahead of the principal, the
    // worker stays its own for kNonatomicReserve, for the lane's next message (see there).
    bool acquire_nonatomic(uint32_t principal, const Id& lane, Clock::time_point now = Clock::now());
    void release_nonatomic(uint32_t principal, Clock::time_point now = Clock::now(), const Id& lane = Id{},
                           bool more_in_batch = false);

    // Giving a batch back (done, retry_later, release, lost...) does not wake the waiting
    // workers: the worker that gave it back calls take() next and takes what it freed itself;
    // take() wakes the others only when more than it took is ready. Waking them at every
    // give-back made an idle worker race the one that had finished for its next batch, a
    // thread handoff per batch (on a saturated host, milliseconds each). A worker that does not
    // come back to take() (it reconnects or exits) calls wake_others() instead.
    void wake_others();

    // A new stream: drop every lane (suspicion, losses and verdicts are kept).
    void clear();
    // Wake every waiting worker; take() returns nullopt from now on until clear().
    void stop();

    size_t queued() const;
    size_t in_flight() const;
    size_t suspects() const;
    // Emit time of the oldest queued message (0: none).
    int64_t oldest_emit() const;
    // A lane the nested pool should serve (a running message waits for its next message) is
    // ready.
    bool nested_waiting() const;

private:
    struct Lane {
        std::deque<Pending> q;
        bool leased = false;
        Clock::time_point leased_at{};
        uint32_t leased_principal = 0;
        bool parking = false;
        bool slow = false;  // its last batch ran longer than park_after
        Clock::time_point not_before{};
    };
    struct Unexplained {
        std::vector<Id> ids;
        bool suspect = false;  // ids[0] ran alone
        std::string server_start;
    };
    void suspect_locked(const std::vector<Id>& ids, bool alone);
    void annotate(Pending& p) const;

    bool eligible(const Lane& l, const Id& lane_id, WorkerKind kind) const;
    bool in_suspect_family(const Id& lane_id) const;
    bool suspect_running() const { return family_in_flight_ > 0; }
    bool waits_for_park(const Pending& head) const;
    bool held_by_parent(const Pending& p) const;
    bool batch_delayed(const Lane& l, Clock::time_point now) const;
    void take_run(Lane& l, Batch& b, size_t most);
    bool any_eligible_locked() const;
    Batch lease(const Id& lane_id, Lane& l, WorkerKind kind);
    void requeue(const Id& lane_id, Lane& l);
    void promote_due(Clock::time_point now);
    void give_back(const Batch& b, size_t from, Clock::time_point when);
    void forget_handled(const Batch& b, size_t n);

    Options opt_;
    mutable std::mutex mu_;
    // One per pool: a nested worker can take only a running parent's waited child, so a wake-up
    // for other work that reached one was lost, and the message waited for a regular worker's
    // next poll (200 ms) behind a pool of idle nested workers.
    std::condition_variable regular_cv_;
    std::condition_variable nested_cv_;
    void notify_all_locked();
    std::unordered_map<Id, Lane, IdHash> lanes_;
    std::deque<Id> ready_;                          // lanes with messages, not leased, due
    std::multimap<Clock::time_point, Id> delayed_;  // lanes waiting for a retry time
    std::map<uint32_t, size_t> principal_busy_;     // regular workers per principal
    std::map<uint32_t, size_t> nested_busy_;        // nested-pool workers per principal
    size_t nonatomic_total_ = 0;
    struct NonatomicWaiter {
        uint32_t principal = 0;
        Clock::time_point first{}, last{};  // first and latest refusal
        std::vector<Id> lanes;              // its lanes refused, woken when a worker is free
    };
    std::vector<NonatomicWaiter> nonatomic_waiting_;
    // What each principal had of the background workers lately: when it last got one, and the
    // worker time it used, decayed (a half-life of kUseHalfLife), running holds included.
    struct NonatomicUse {
        Clock::time_point served{};
        double seconds = 0;
        Clock::time_point as_of{};
        std::deque<Clock::time_point> holds;  // starts of the workers it holds now (how many)
        Clock::time_point reserved_until{};   // a worker it gave back is kept for it until then
    };
    std::unordered_map<uint32_t, NonatomicUse> nonatomic_use_;
    double nonatomic_used(uint32_t principal, Clock::time_point now) const;
    size_t nonatomic_held(uint32_t principal) const;
    bool nonatomic_ahead(const NonatomicWaiter& a, const NonatomicWaiter& b, Clock::time_point now) const;
    void wake_nonatomic_waiter(Clock::time_point now, Clock::time_point at);
    size_t nonatomic_waiters_ahead(const NonatomicWaiter& self, Clock::time_point now) const;
    size_t nonatomic_reserved(uint32_t except, Clock::time_point now) const;
    bool nonatomic_reserved_for(uint32_t principal, Clock::time_point now) const;
    // A message in a leased batch. Parked before it was leased or while it runs, it no longer
    // holds the slot, and the atx_exec children it waits for do.
    struct Running {
        Pending p;  // as leased
        Clock::time_point since{};
        bool parked = false;
        bool parking = false;  // handed out by park_candidates, no answer yet
    };
    using RunningMap = std::unordered_multimap<Id, Running, IdHash>;
    RunningMap running_;  // by id: a lane is its parent's id
    RunningMap::iterator running_at(const Pending& p);
    // Ids of the messages queued or leased: one copy of each (add()). Before, the two copies of
    // a nested message re-emitted by its parent's retry were both marked parked when one was,
    // and the slot then waited for the one whose park had not counted, for good.
    // By lane: a waited child loaded parked with its parent runs in the parent's lane, and the
    // copy the parent's new run writes, in the parent's id as lane, must still be queued (it is
    // the one that runs while the parent waits); that copy's own copies are not.
    std::unordered_multimap<Id, Id, IdHash> live_;  // id -> each lane it is queued or runs in
    std::unordered_set<Id, IdHash> suspects_;
    std::unordered_map<Id, uint32_t, IdHash> losses_;
    std::unordered_map<Id, Verdict, IdHash> verdicts_;
    std::vector<Unexplained> unexplained_;
    std::unordered_set<Id, IdHash> suspect_family_;  // the running suspect and its leased nested messages
    size_t family_in_flight_ = 0;  // their batches leased; > 0: a suspect's family runs, no other suspect starts
    size_t in_flight_ = 0;
    size_t parked_ = 0;          // parked messages not handled yet
    bool wake_pending_ = false;  // a give-back may have made work the waiting workers can take
    bool stopped_ = false;
    Clock::time_point park_broken_until_{};
    // Principals whose last batch ran at least half of park_after, until park_after later: their
    // messages that have waited park_after are parked even while no batch of theirs has run that
    // long yet. A backlog of 3 s messages drained through a principal's two sessions never had a
    // 5 s stall, and held the slot for minutes (the isolation bench's nested loops).
    std::map<uint32_t, Clock::time_point> principal_slow_until_;
};

}  // namespace atx::applier
