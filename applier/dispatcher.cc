// See dispatcher.h.
#include "dispatcher.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "message.h"

namespace atx::applier {

namespace {

// How many eligible lanes take() compares for fairness between principals (ready_ holds one
// entry per lane with work: with thousands of callers, a bound on the work per take).
constexpr size_t kFairScan = 256;

// A principal refused a background worker that has not asked again for this long no longer
// waits (a refused message asks again after the deferral's 1 s backoff).
constexpr std::chrono::seconds kWaiterGone{5};
// How long a worker given back stays with its principal when the same lane has more messages
// queued: the lane's next message must first run atomically to learn that it needs a top-level
// run (about 0.1 s under load). Without it, a chain whose deferred lanes asked again every few
// milliseconds took the worker in that gap, and a victim's lane of non-atomic messages waited
// for one whole run of the chain per message (fuzz seed 2614, run nine, round 25: 13.2 s).
constexpr std::chrono::milliseconds kNonatomicReserve{500};
constexpr size_t kServedKept = 4096;  // principals remembered as served, for the round robin
// Worker time used counts half after this long: a login's runs of a minute ago still weigh, a
// morning's do not.
constexpr double kUseHalfLife = 60.0;
// Worker times closer than this are equal: the order then is the round robin's.
constexpr double kUseGrain = 0.25;

}  // namespace

// Two words and a multiply-xorshift mix, not a loop over 16 bytes (7% of the applier's CPU in a
// drain). The ids are the extension's (random bits after a time, a digest, a backend's pid and
// start): nobody chooses them, so no keyed hash is needed against collisions made on purpose.
size_t IdHash::operator()(const Id& id) const noexcept
{
    uint64_t a, b;
    std::memcpy(&a, id.data(), 8);
    std::memcpy(&b, id.data() + 8, 8);
    uint64_t h = (a ^ (b * 0x9E3779B97F4A7C15ULL)) * 0xD6E8FEB86659FD93ULL;
    h ^= h >> 32;
    h *= 0xD6E8FEB86659FD93ULL;
    return static_cast<size_t>(h ^ (h >> 32));
}

// The waited nested message at the head of q: what the nested pool exists for.
static bool nested_head(const std::deque<Pending>& q) { return !q.empty() && q.front().depth > 0 && q.front().waited; }

// Caller holds the lock: what is known of p beyond the stream (suspicion, losses, verdict).
void Dispatcher::annotate(Pending& p) const
{
    // Usually all three are empty: no lookup then (each message of a drain passes here).
    p.suspect = !suspects_.empty() && suspects_.count(p.id) > 0;
    if (auto l = losses_.empty() ? losses_.end() : losses_.find(p.id); l != losses_.end())
        p.losses = l->second;
    if (auto v = verdicts_.empty() ? verdicts_.end() : verdicts_.find(p.id); v != verdicts_.end())
        p.verdict = v->second;
}

bool Dispatcher::add(Pending p)
{
    std::lock_guard<std::mutex> lock(mu_);
    // An undecodable message has no id of its own (pending_of): never a copy.
    if (p.id != Id{}) {
        auto [from, to] = live_.equal_range(p.id);
        if (std::any_of(from, to, [&](const auto& e) { return e.second == p.lane; }))
            return false;
        live_.emplace(p.id, p.lane);
    }
    annotate(p);
    if (p.queued_at == Clock::time_point{})
        p.queued_at = Clock::now();
    if (p.parked)
        ++parked_;
    Lane& l = lanes_[p.lane];
    const bool was_empty = l.q.empty();
    const Id lane_id = p.lane;
    l.q.push_back(std::move(p));
    if (was_empty && !l.leased) {
        if (l.not_before > Clock::now())
            delayed_.emplace(l.not_before, lane_id);
        else
            ready_.push_back(lane_id);
        regular_cv_.notify_one();
        if (nested_head(l.q) && running_.count(lane_id) > 0)
            nested_cv_.notify_one();
    }
    return true;
}

void Dispatcher::notify_all_locked()
{
    regular_cv_.notify_all();
    nested_cv_.notify_all();
}

bool Dispatcher::eligible(const Lane& l, const Id& lane_id, WorkerKind kind) const
{
    if (l.leased || l.parking || l.q.empty())
        return false;
    const Pending& head = l.q.front();
    // A message the applier decided not to run is only dead-lettered: no user code, a few
    // milliseconds. Outside its principal's budget, so that its final state does not wait for
    // that principal's other long statements (an overdue stall's dead letter waited for the next
    // ones of the same login to overstay too), and not parked first: its lane is slow (it ran
    // past its limit), and a condemned stall whose 92,800 children filled every park pass was
    // dead-lettered by nobody for 40 s (fuzz seed 2614 round 42).
    if (head.verdict && kind == WorkerKind::Regular)
        return true;
    if (l.slow && waits_for_park(head))
        return false;
    if (batch_delayed(l, Clock::now()))
        return false;
    if (head.suspect && suspect_running() && !(kind == WorkerKind::Nested && in_suspect_family(lane_id)))
        return false;
    if (kind == WorkerKind::Nested) {
        // Only a wait that can never end otherwise: the parent (the lane) is running now.
        if (!nested_head(l.q) || running_.count(lane_id) == 0)
            return false;
        auto busy = nested_busy_.find(head.as.principal_oid);
        return busy == nested_busy_.end() || busy->second < opt_.nested_budget;
    }
    auto busy = principal_busy_.find(head.as.principal_oid);
    return busy == principal_busy_.end() || busy->second < opt_.role_budget;
}

// Caller holds the lock: a nested lane whose parent is the suspect running alone, or one of its
// nested messages: its head belongs to that run (dispatcher.h, "Poison messages of a crash").
bool Dispatcher::in_suspect_family(const Id& lane_id) const
{
    return suspect_running() && suspect_family_.count(lane_id) > 0;
}

// Caller holds the lock: --batch-delay-ms: a lane waits for more messages while it holds fewer
// than a batch and its oldest arrived less than the delay ago.
bool Dispatcher::batch_delayed(const Lane& l, Clock::time_point now) const
{
    return opt_.batch_delay.count() > 0 && l.q.size() < opt_.batch_size && !l.q.empty() &&
           l.q.front().queued_at + opt_.batch_delay > now;
}

// Caller holds the lock: the head of a slow lane that must be parked before it runs.
bool Dispatcher::waits_for_park(const Pending& head) const
{
    if (opt_.park_after.count() == 0 || head.parked || head.park_tried || (head.depth > 0 && head.waited))
        return false;
    const auto now = Clock::now();
    return now >= park_broken_until_ && head.queued_at <= now - opt_.park_after;
}

void Dispatcher::promote_due(Clock::time_point now)
{
    while (!delayed_.empty() && delayed_.begin()->first <= now) {
        const Id id = delayed_.begin()->second;
        delayed_.erase(delayed_.begin());
        auto it = lanes_.find(id);
        if (it != lanes_.end() && !it->second.leased && !it->second.q.empty() && it->second.not_before <= now)
            ready_.push_back(id);
    }
}

// Caller holds the lock: moves the lane's next messages of b's RunAs that need no batch of their
// own into b, up to `most` in b.
void Dispatcher::take_run(Lane& l, Batch& b, size_t most)
{
    while (!l.q.empty() && b.items.size() < most) {
        const Pending& p = l.q.front();
        if (p.as != b.as || p.suspect || p.verdict || p.losses > 0 || p.attempts > 0 || p.top_level)
            break;
        b.items.push_back(std::move(l.q.front()));
        l.q.pop_front();
    }
}

// Caller holds the lock: the lane's next batch, leased to a worker of `kind`.
Batch Dispatcher::lease(const Id& lane_id, Lane& l, WorkerKind kind)
{
    Batch b;
    b.lane = lane_id;
    b.as = l.q.front().as;
    b.nested = kind == WorkerKind::Nested;
    l.leased = true;
    l.leased_at = Clock::now();
    l.leased_principal = l.q.front().as.principal_oid;
    const Pending& head = l.q.front();
    const bool family = in_suspect_family(lane_id);
    if (head.suspect || head.verdict || head.losses > 0 || head.attempts > 0 || head.top_level) {
        // Alone: a suspect, so that a loss now can only be its doing; a message with a verdict,
        // to be dead-lettered; one that lost a backend before, so that its next loss is clearly
        // its own; one retried after a transient failure, whose time limit is what is left of its
        // retry window; one that waits for a top-level run.
        // A suspect of the running suspect's family runs with it, not alone: a loss now is the
        // family's, counted against the suspect that started it.
        b.suspect = head.suspect && !family;
        b.items.push_back(std::move(l.q.front()));
        l.q.pop_front();
    } else {
        const size_t most = l.slow ? 1 : opt_.batch_size;
        take_run(l, b, most);
    }
    // No other suspect starts until the whole family is back: a child may outlive its parent's
    // run (the parent's wait timed out, or it overstayed), and a crash it causes then must not
    // be counted against the next suspect.
    b.family = b.suspect || family;
    if (b.family) {
        ++family_in_flight_;
        for (const auto& p : b.items)
            suspect_family_.insert(p.id);
    }
    if (kind == WorkerKind::Regular)
        ++principal_busy_[b.as.principal_oid];
    else
        ++nested_busy_[b.as.principal_oid];
    for (const auto& p : b.items)
        running_.emplace(p.id, Running{p, l.leased_at, p.parked, false});
    in_flight_ += b.items.size();
    return b;
}

std::optional<Batch> Dispatcher::take(WorkerKind kind, std::optional<RunAs> prefer, std::chrono::milliseconds wait)
{
    std::unique_lock<std::mutex> lock(mu_);
    const auto deadline = Clock::now() + wait;
    // What a give-back left for the others, once this worker has taken its own share.
    auto pass_on = [this]() {
        if (wake_pending_) {
            wake_pending_ = false;
            if (any_eligible_locked())
                notify_all_locked();
        }
    };
    for (;;) {
        if (stopped_)
            return std::nullopt;
        const auto now = Clock::now();
        promote_due(now);
        // Fair between principals first: the lane whose principal holds the fewest sessions of
        // this pool, so that a principal that fills its budget with long statements (and has
        // many lanes waiting ahead in ready_) delays another's next message by one of its runs
        // at most, not by all of them. Among those, the RunAs this session serves (no
        // reconnect), else the oldest.
        auto chosen = ready_.end();
        size_t chosen_busy = SIZE_MAX;
        bool chosen_preferred = false;
        size_t seen = 0;
        for (auto r = ready_.begin(); r != ready_.end() && seen < kFairScan; ++r) {
            auto it = lanes_.find(*r);
            if (it == lanes_.end() || !eligible(it->second, *r, kind))
                continue;
            ++seen;
            if (it->second.q.front().verdict) {
                chosen = r;  // first: it only needs its dead letter written (eligible())
                break;
            }
            const RunAs& as = it->second.q.front().as;
            const auto& pool = kind == WorkerKind::Nested ? nested_busy_ : principal_busy_;
            const auto busy_it = pool.find(as.principal_oid);
            const size_t busy = busy_it == pool.end() ? 0 : busy_it->second;
            const bool preferred = prefer && as == *prefer;
            if (busy < chosen_busy || (busy == chosen_busy && preferred && !chosen_preferred)) {
                chosen = r;
                chosen_busy = busy;
                chosen_preferred = preferred;
            }
            if (chosen_busy == 0 && (chosen_preferred || !prefer))
                break;
        }
        if (chosen != ready_.end()) {
            const Id lane_id = *chosen;
            ready_.erase(chosen);
            Batch b = lease(lane_id, lanes_[lane_id], kind);
            pass_on();
            return b;
        }
        // Drop stale entries (lanes that vanished, emptied or are leased) so the scan stays short.
        ready_.erase(std::remove_if(ready_.begin(), ready_.end(),
                                    [&](const Id& id) {
                                        auto it = lanes_.find(id);
                                        return it == lanes_.end() || it->second.q.empty() || it->second.leased;
                                    }),
                     ready_.end());
        auto until = deadline;
        if (!delayed_.empty())
            until = std::min(until, delayed_.begin()->first);
        if (opt_.batch_delay.count() > 0)
            for (const Id& id : ready_)
                if (auto it = lanes_.find(id); it != lanes_.end() && batch_delayed(it->second, now))
                    until = std::min(until, it->second.q.front().queued_at + opt_.batch_delay);
        pass_on();
        if (now >= deadline)
            return std::nullopt;
        (kind == WorkerKind::Nested ? nested_cv_ : regular_cv_).wait_until(lock, until);
    }
}

void Dispatcher::requeue(const Id& lane_id, Lane& l)
{
    l.leased = false;
    if (l.q.empty()) {
        lanes_.erase(lane_id);
        return;
    }
    if (l.not_before > Clock::now())
        delayed_.emplace(l.not_before, lane_id);
    else
        ready_.push_back(lane_id);
    wake_pending_ = true;  // see wake_others()
}

bool Dispatcher::any_eligible_locked() const
{
    for (const Id& id : ready_) {
        auto it = lanes_.find(id);
        if (it != lanes_.end() &&
            (eligible(it->second, id, WorkerKind::Regular) || eligible(it->second, id, WorkerKind::Nested)))
            return true;
    }
    return false;
}

void Dispatcher::wake_others()
{
    std::lock_guard<std::mutex> lock(mu_);
    if (wake_pending_) {
        wake_pending_ = false;
        notify_all_locked();
    }
}

// Caller holds the lock. Puts b's items from `from` on back at the front of their lane and ends
// the lease, not before `when`. The lane becomes slow when the batch ran longer than park_after
// (dispatcher.h).
void Dispatcher::give_back(const Batch& b, size_t from, Clock::time_point when)
{
    Lane& l = lanes_[b.lane];
    const auto now = Clock::now();
    l.slow = opt_.park_after.count() > 0 && now - l.leased_at >= opt_.park_after;
    if (opt_.park_after.count() > 0 && now - l.leased_at >= opt_.park_after / 2)
        principal_slow_until_[b.as.principal_oid] = now + opt_.park_after;
    for (size_t i = b.items.size(); i > from; --i) {
        Pending p = b.items[i - 1];
        if (const auto r = running_at(p); r != running_.end()) {  // parked while it ran
            p.parked = p.parked || r->second.parked;
            p.park_tried = p.park_tried || r->second.p.park_tried;
            // Handed to atx.park and not answered yet: the answer comes to the lane (parked()),
            // which is not taken until then. Lost, the message stayed unparked while its copy
            // was in the server, and the slot waited for its run.
            if (r->second.parking)
                l.parking = true;
        }
        annotate(p);
        l.q.push_front(std::move(p));
    }
    l.not_before = when;
    requeue(b.lane, l);
    in_flight_ -= b.items.size();
    for (const auto& p : b.items)
        if (const auto r = running_at(p); r != running_.end())
            running_.erase(r);
    auto& busy = b.nested ? nested_busy_ : principal_busy_;
    auto it = busy.find(b.as.principal_oid);
    if (it != busy.end() && it->second > 0 && --it->second == 0)
        busy.erase(it);
    if (b.family && family_in_flight_ > 0 && --family_in_flight_ == 0)
        suspect_family_.clear();
}

// Caller holds the lock: the first n messages of b are handled; what was kept about them goes.
void Dispatcher::forget_handled(const Batch& b, size_t n)
{
    for (size_t i = 0; i < n && i < b.items.size(); ++i) {
        const auto r = running_at(b.items[i]);
        if ((b.items[i].parked || (r != running_.end() && r->second.parked)) && parked_ > 0)
            --parked_;
        if (!suspects_.empty())
            suspects_.erase(b.items[i].id);
        for (auto [it, to] = live_.equal_range(b.items[i].id); it != to;)
            it = it->second == b.lane ? live_.erase(it) : std::next(it);
        if (!losses_.empty())
            losses_.erase(b.items[i].id);
        if (!verdicts_.empty())
            verdicts_.erase(b.items[i].id);
    }
}

void Dispatcher::done(const Batch& b, size_t n)
{
    std::lock_guard<std::mutex> lock(mu_);
    forget_handled(b, n);
    give_back(b, std::min(n, b.items.size()), Clock::time_point{});
}

void Dispatcher::retry_later(const Batch& b, size_t n, Clock::time_point when, int64_t now_us)
{
    std::lock_guard<std::mutex> lock(mu_);
    Batch copy = b;
    forget_handled(copy, n);
    if (n < copy.items.size()) {
        Pending& p = copy.items[n];
        ++p.attempts;
        if (p.first_failed_us == 0)
            p.first_failed_us = now_us;
    }
    give_back(copy, std::min(n, copy.items.size()), when);
}

void Dispatcher::release(const Batch& b, Clock::time_point when) { release_after(b, 0, when); }

void Dispatcher::release_after(const Batch& b, size_t n, Clock::time_point when)
{
    std::lock_guard<std::mutex> lock(mu_);
    forget_handled(b, n);
    give_back(b, std::min(n, b.items.size()), when);
}

void Dispatcher::lost_running(const Batch& b, const Id& id)
{
    std::lock_guard<std::mutex> lock(mu_);
    if (++losses_[id] >= opt_.max_backend_losses)
        verdicts_[id] = Verdict::BackendLost;
    give_back(b, 0, Clock::time_point{});
}

void Dispatcher::condemn(const Batch& b, const Id& id, Verdict v)
{
    std::lock_guard<std::mutex> lock(mu_);
    verdicts_[id] = v;
    give_back(b, 0, Clock::time_point{});
}

// Caller holds the lock.
void Dispatcher::suspect_locked(const std::vector<Id>& ids, bool alone)
{
    if (alone && !ids.empty()) {
        if (++losses_[ids[0]] >= opt_.max_backend_losses)
            verdicts_[ids[0]] = Verdict::BackendLost;
    } else {
        for (const auto& id : ids)
            suspects_.insert(id);
    }
}

static std::vector<Id> ids_of(const Batch& b)
{
    std::vector<Id> ids;
    ids.reserve(b.items.size());
    for (const auto& p : b.items)
        ids.push_back(p.id);
    return ids;
}

void Dispatcher::lost(const Batch& b)
{
    std::lock_guard<std::mutex> lock(mu_);
    suspect_locked(ids_of(b), b.suspect);
    give_back(b, 0, Clock::time_point{});  // picks the suspicion up again
}

void Dispatcher::lost_unexplained(const Batch& b, const std::string& server_start)
{
    std::lock_guard<std::mutex> lock(mu_);
    unexplained_.push_back(Unexplained{ids_of(b), b.suspect, server_start});
    give_back(b, 0, Clock::time_point{});
}

void Dispatcher::settle(const std::string& server_start)
{
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& u : unexplained_)
        if (u.server_start != server_start)
            suspect_locked(u.ids, u.suspect);
    unexplained_.clear();
    // Messages already back in their lanes learn it now.
    for (auto& [id, l] : lanes_)
        for (auto& p : l.q)
            annotate(p);
}

// Caller holds the lock: an atx_exec child whose parent runs unparked (the parent holds the slot
// before it, so parking the child would move nothing). A nested message's lane is its parent.
bool Dispatcher::held_by_parent(const Pending& p) const
{
    if (p.depth == 0 || !p.waited)
        return false;
    const auto parents = running_.equal_range(p.lane);
    for (auto it = parents.first; it != parents.second; ++it)
        if (!it->second.parked)
            return true;
    return false;
}

// Caller holds the lock: the running entry of this copy of a message (end(): none). Two copies of
// one id, in two lanes, may run at once (live_).
Dispatcher::RunningMap::iterator Dispatcher::running_at(const Pending& p)
{
    const auto range = running_.equal_range(p.id);
    for (auto it = range.first; it != range.second; ++it)
        if (it->second.p.start == p.start)
            return it;
    return running_.end();
}

std::vector<Pending> Dispatcher::park_candidates(Clock::time_point before, size_t max)
{
    std::lock_guard<std::mutex> lock(mu_);
    const auto now = Clock::now();
    std::set<uint32_t> stalled;  // principals with a batch running since before `before`, or slow
    for (const auto& [id, l] : lanes_)
        if (l.leased && l.leased_at <= before)
            stalled.insert(l.leased_principal);
    for (auto it = principal_slow_until_.begin(); it != principal_slow_until_.end();) {
        if (it->second <= now) {
            it = principal_slow_until_.erase(it);
        } else {
            stalled.insert(it->first);
            ++it;
        }
    }
    // The oldest first, whichever lane they are in: the slot waits for the oldest. Taken lane by
    // lane in map order, one lane of 92,800 children filled every pass, and the message that held
    // the slot was never reached.
    struct Candidate {
        Lsn start;
        const Pending* p;
        Lane* lane;        // queued
        Running* running;  // or running
    };
    std::vector<Candidate> all;
    for (auto& [id, l] : lanes_) {
        if (l.parking || l.q.empty())
            continue;
        const bool lane_stalled = (l.leased && l.leased_at <= before) || l.not_before > now || l.slow;
        size_t taken = 0;
        for (const auto& p : l.q) {
            if (taken >= max)
                break;  // later ones of this lane cannot be among the oldest max
            if (p.parked || p.verdict || p.queued_at > before || held_by_parent(p))
                continue;
            if (!lane_stalled && stalled.count(p.as.principal_oid) == 0)
                continue;
            all.push_back({p.start, &p, &l, nullptr});
            ++taken;
        }
    }
    for (auto& [id, r] : running_) {
        const Pending& p = r.p;
        if (r.parked || r.parking || p.park_tried || r.since > before || p.queued_at > before || held_by_parent(p))
            continue;
        all.push_back({p.start, &p, nullptr, &r});
    }
    if (all.size() > max) {
        std::nth_element(all.begin(), all.begin() + static_cast<long>(max), all.end(),
                         [](const Candidate& a, const Candidate& b) { return a.start < b.start; });
        all.resize(max);
    }
    std::sort(all.begin(), all.end(), [](const Candidate& a, const Candidate& b) { return a.start < b.start; });
    std::vector<Pending> out;
    out.reserve(all.size());
    for (const auto& c : all) {
        out.push_back(*c.p);
        if (c.lane)
            c.lane->parking = true;
        else
            c.running->parking = true;
    }
    return out;
}

void Dispatcher::parked(const std::vector<Lsn>& starts, const std::vector<Lsn>& tried)
{
    std::lock_guard<std::mutex> lock(mu_);
    // By position, not by id: another copy of the same id (in another lane) was not parked, and
    // marked parked it would never count as handled for the slot (on_handled skips a parked
    // one), which then waited for it for good (fuzz seed 2614, rounds 27-28 of runs 11-13).
    const std::unordered_set<Lsn> set(starts.begin(), starts.end()), tried_set(tried.begin(), tried.end());
    for (auto& [id, l] : lanes_) {
        if (!l.parking)
            continue;
        l.parking = false;
        for (auto& p : l.q) {
            if (tried_set.count(p.start))
                p.park_tried = true;
            if (set.count(p.start) && !p.parked) {
                p.parked = true;
                ++parked_;
            }
        }
    }
    for (auto& [id, r] : running_) {
        if (!r.parking)
            continue;
        r.parking = false;
        if (tried_set.count(r.p.start))
            r.p.park_tried = true;
        if (set.count(r.p.start) && !r.parked) {
            r.parked = true;
            ++parked_;
        }
    }
    notify_all_locked();
}

void Dispatcher::park_failed()
{
    parked({}, {});
    std::lock_guard<std::mutex> lock(mu_);
    park_broken_until_ = Clock::now() + std::chrono::minutes(1);
}

std::string Dispatcher::where(Lsn start) const
{
    std::lock_guard<std::mutex> lock(mu_);
    const auto now = Clock::now();
    auto ms_from_now = [&](Clock::time_point t) {
        return std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(t - now).count());
    };
    auto state = [&](const Pending& p) {
        std::string s = "id=" + uuid_to_string(p.id) + " depth=" + std::to_string(p.depth) +
                        (p.waited ? " waited" : "") + (p.parked ? " parked" : "") + (p.suspect ? " suspect" : "") +
                        (p.top_level ? " top_level" : "") + (p.verdict ? " verdict" : "") +
                        " attempts=" + std::to_string(p.attempts) + " losses=" + std::to_string(p.losses);
        if (const size_t n = live_.count(p.id); n > 0)
            s += " live_in_lanes=" + std::to_string(n);
        return s;
    };
    for (const auto& [id, r] : running_)
        if (r.p.start == start)
            return "running " + state(r.p) + " lane=" + uuid_to_string(r.p.lane) + (r.parked ? " run_parked" : "") +
                   (r.parking ? " parking" : "") + " since_ms=" + ms_from_now(r.since);
    for (const auto& [lane_id, l] : lanes_) {
        size_t pos = 0;
        for (const auto& p : l.q) {
            if (p.start == start) {
                const Pending& head = l.q.front();
                const bool in_ready = std::find(ready_.begin(), ready_.end(), lane_id) != ready_.end();
                bool in_delayed = false;
                for (const auto& [t, d] : delayed_)
                    in_delayed = in_delayed || d == lane_id;
                const bool parent_running = running_.count(lane_id) > 0;
                return "queued " + state(p) + " lane=" + uuid_to_string(lane_id) + " position=" + std::to_string(pos) +
                       " of " + std::to_string(l.q.size()) + (l.leased ? " lane_leased" : "") +
                       (l.parking ? " lane_parking" : "") + (l.slow ? " lane_slow" : "") +
                       " not_before_ms=" + ms_from_now(l.not_before) + (in_ready ? " in_ready" : "") +
                       (in_delayed ? " in_delayed" : "") + (parent_running ? " parent_running" : "") +
                       " regular_eligible=" + (eligible(l, lane_id, WorkerKind::Regular) ? "yes" : "no") +
                       " nested_eligible=" + (eligible(l, lane_id, WorkerKind::Nested) ? "yes" : "no") +
                       " suspect_running=" + (suspect_running() ? "yes" : "no") + " head=(" + state(head) + ")";
            }
            ++pos;
        }
    }
    return "not queued or running";
}

size_t Dispatcher::parked_queued() const
{
    std::lock_guard<std::mutex> lock(mu_);
    return parked_;
}

size_t Dispatcher::nonatomic_held(uint32_t principal) const
{
    const auto it = nonatomic_use_.find(principal);
    return it == nonatomic_use_.end() ? 0 : it->second.holds.size();
}

namespace {
double decayed(double seconds, Clock::time_point from, Clock::time_point to)
{
    const double dt = std::chrono::duration<double>(to - from).count();
    return dt <= 0 ? seconds : seconds * std::exp2(-dt / kUseHalfLife);
}
}  // namespace

// Caller holds the lock.
double Dispatcher::nonatomic_used(uint32_t principal, Clock::time_point now) const
{
    const auto it = nonatomic_use_.find(principal);
    if (it == nonatomic_use_.end())
        return 0;
    double s = decayed(it->second.seconds, it->second.as_of, now);
    for (const auto& start : it->second.holds)
        s += std::max(0.0, std::chrono::duration<double>(now - start).count());
    return s;
}

// Caller holds the lock: a is served before b: the one holding fewer workers, then the one that
// used less worker time lately (a login whose non-atomic messages are short is not kept behind
// the long runs of others once per message), then the one served longest ago (round robin: a
// login whose chain asks again the moment it is refused does not stay ahead of one that asks now
// and then), then the one refused first.
bool Dispatcher::nonatomic_ahead(const NonatomicWaiter& a, const NonatomicWaiter& b, Clock::time_point now) const
{
    const size_t ha = nonatomic_held(a.principal), hb = nonatomic_held(b.principal);
    if (ha != hb)
        return ha < hb;
    const double ua = std::floor(nonatomic_used(a.principal, now) / kUseGrain),
                 ub = std::floor(nonatomic_used(b.principal, now) / kUseGrain);
    if (ua != ub)
        return ua < ub;
    const auto served = [this](uint32_t p) {
        const auto it = nonatomic_use_.find(p);
        return it == nonatomic_use_.end() ? Clock::time_point{} : it->second.served;
    };
    const auto sa = served(a.principal), sb = served(b.principal);
    return sa != sb ? sa < sb : a.first < b.first;
}

bool Dispatcher::acquire_nonatomic(uint32_t principal, const Id& lane, Clock::time_point now)
{
    std::lock_guard<std::mutex> lock(mu_);
    // A waiter that stopped asking (its message was handled another way, its lane went) has
    // been refused again within a second or two otherwise (the deferral's backoff).
    nonatomic_waiting_.erase(std::remove_if(nonatomic_waiting_.begin(), nonatomic_waiting_.end(),
                                            [&](const NonatomicWaiter& w) { return w.last + kWaiterGone < now; }),
                             nonatomic_waiting_.end());
    auto me = std::find_if(nonatomic_waiting_.begin(), nonatomic_waiting_.end(),
                           [&](const NonatomicWaiter& w) { return w.principal == principal; });
    const size_t mine = nonatomic_held(principal);
    bool refused = mine >= opt_.nonatomic_per_principal || nonatomic_total_ >= opt_.nonatomic_total;
    if (!refused) {
        // Only as many free workers as waiters ahead of it: those are theirs.
        const NonatomicWaiter self{principal, me == nonatomic_waiting_.end() ? now : me->first, now, {}};
        const size_t ahead = nonatomic_reserved(principal, now) + nonatomic_waiters_ahead(self, now);
        refused = opt_.nonatomic_total - nonatomic_total_ <= ahead;
    }
    if (refused) {
        // Also a principal at its own share queues: when it gives a worker back, the next of its
        // messages waits with the others, and its turn is decided there. Left out, a victim's
        // second non-atomic message was refused while its first ran, the worker the first freed
        // went to a chain that waited, and the second waited for that chain's whole run (fuzz
        // seed 2614 round 23: 21.8 s). Waiters at their share are never counted ahead of others.
        if (me == nonatomic_waiting_.end()) {
            nonatomic_waiting_.push_back({principal, now, now, {}});
            me = std::prev(nonatomic_waiting_.end());
        }
        me->last = now;
        if (std::find(me->lanes.begin(), me->lanes.end(), lane) == me->lanes.end())
            me->lanes.push_back(lane);
        return false;
    }
    if (me != nonatomic_waiting_.end())
        nonatomic_waiting_.erase(me);
    if (nonatomic_use_.size() > kServedKept)  // principals that come and go: keep the recent ones
        for (auto it = nonatomic_use_.begin(); it != nonatomic_use_.end();)
            it = it->second.holds.empty() && it->second.served + std::chrono::minutes(10) < now
                     ? nonatomic_use_.erase(it)
                     : std::next(it);
    auto& use = nonatomic_use_[principal];
    use.served = now;
    use.holds.push_back(now);
    use.reserved_until = Clock::time_point{};
    ++nonatomic_total_;
    return true;
}

// Caller holds the lock: the principals waiting (not at their share, nor kept a worker) that come
// before `self` by the order.
size_t Dispatcher::nonatomic_waiters_ahead(const NonatomicWaiter& self, Clock::time_point now) const
{
    size_t n = 0;
    for (const auto& w : nonatomic_waiting_)
        if (w.principal != self.principal && nonatomic_held(w.principal) < opt_.nonatomic_per_principal &&
            !nonatomic_reserved_for(w.principal, now) && nonatomic_ahead(w, self, now))
            ++n;
    return n;
}

// Caller holds the lock: workers kept for principals other than `except` (given back by them
// less than kNonatomicReserve ago, for the next message of the same lane).
size_t Dispatcher::nonatomic_reserved(uint32_t except, Clock::time_point now) const
{
    size_t n = 0;
    for (const auto& [p, use] : nonatomic_use_)
        if (p != except && nonatomic_reserved_for(p, now))
            ++n;
    return n;
}

bool Dispatcher::nonatomic_reserved_for(uint32_t principal, Clock::time_point now) const
{
    const auto it = nonatomic_use_.find(principal);
    return it != nonatomic_use_.end() && it->second.reserved_until > now &&
           it->second.holds.size() < opt_.nonatomic_per_principal;
}

// Caller holds the lock: a worker is free at `at` (now, or when a reservation ends); the lanes
// of the waiter it goes to need not sit out their deferral's backoff.
void Dispatcher::wake_nonatomic_waiter(Clock::time_point now, Clock::time_point at)
{
    const NonatomicWaiter* first = nullptr;
    for (const auto& w : nonatomic_waiting_)
        if (nonatomic_held(w.principal) < opt_.nonatomic_per_principal && !nonatomic_reserved_for(w.principal, now) &&
            (!first || nonatomic_ahead(w, *first, now)))
            first = &w;
    if (!first)
        return;
    for (const Id& id : first->lanes) {
        auto it = lanes_.find(id);
        // Only the deferral's wait is cut short, never a retry's backoff (attempts > 0).
        if (it == lanes_.end() || it->second.leased || it->second.q.empty() || it->second.not_before <= at ||
            it->second.q.front().attempts > 0)
            continue;
        it->second.not_before = at;
        if (at > now)
            delayed_.emplace(at, id);
        else
            ready_.push_back(id);
    }
}

void Dispatcher::release_nonatomic(uint32_t principal, Clock::time_point now, const Id& lane, bool more_in_batch)
{
    std::lock_guard<std::mutex> lock(mu_);
    const auto u = nonatomic_use_.find(principal);
    if (u == nonatomic_use_.end() || u->second.holds.empty())
        return;  // held before a clear()
    if (nonatomic_total_ > 0)
        --nonatomic_total_;
    // Which of its holds ended is not said; the sum over time is the same.
    auto& use = u->second;
    use.seconds = decayed(use.seconds, use.as_of, now) +
                  std::max(0.0, std::chrono::duration<double>(now - use.holds.front()).count());
    use.as_of = now;
    use.holds.pop_front();
    // The lane's next message may need a worker too: it is kept for it, unless a waiter comes
    // first by the order anyway. A first waiter's lanes are made due when the reservation ends.
    const auto next = lanes_.find(lane);
    const bool more = lane != Id{} && (more_in_batch || (next != lanes_.end() && !next->second.q.empty()));
    if (more && use.holds.size() < opt_.nonatomic_per_principal &&
        nonatomic_waiters_ahead({principal, now, now, {}}, now) == 0) {
        use.reserved_until = now + kNonatomicReserve;
        // Another worker free beyond the ones kept: the first waiter need not wait for this one.
        const bool spare = opt_.nonatomic_total - nonatomic_total_ > nonatomic_reserved(0, now);
        wake_nonatomic_waiter(now, spare ? now : use.reserved_until);
    } else {
        wake_nonatomic_waiter(now, now);
    }
    wake_pending_ = true;
}

void Dispatcher::clear()
{
    std::lock_guard<std::mutex> lock(mu_);
    lanes_.clear();
    ready_.clear();
    delayed_.clear();
    principal_busy_.clear();
    nested_busy_.clear();
    nonatomic_total_ = 0;
    nonatomic_waiting_.clear();
    nonatomic_use_.clear();
    running_.clear();
    live_.clear();
    suspect_family_.clear();
    family_in_flight_ = 0;
    in_flight_ = 0;
    parked_ = 0;
    principal_slow_until_.clear();
    stopped_ = false;
}

void Dispatcher::stop()
{
    std::lock_guard<std::mutex> lock(mu_);
    stopped_ = true;
    notify_all_locked();
}

size_t Dispatcher::queued() const
{
    std::lock_guard<std::mutex> lock(mu_);
    size_t n = 0;
    for (const auto& [id, l] : lanes_)
        n += l.q.size();
    return n;
}

size_t Dispatcher::in_flight() const
{
    std::lock_guard<std::mutex> lock(mu_);
    return in_flight_;
}

size_t Dispatcher::suspects() const
{
    std::lock_guard<std::mutex> lock(mu_);
    return suspects_.size();
}

int64_t Dispatcher::oldest_emit() const
{
    std::lock_guard<std::mutex> lock(mu_);
    int64_t oldest = 0;
    for (const auto& [id, l] : lanes_)
        if (!l.q.empty() && (oldest == 0 || l.q.front().emit_time < oldest))
            oldest = l.q.front().emit_time;
    return oldest;
}

bool Dispatcher::nested_waiting() const
{
    std::lock_guard<std::mutex> lock(mu_);
    for (const Id& id : ready_) {
        auto it = lanes_.find(id);
        if (it != lanes_.end() && eligible(it->second, id, WorkerKind::Nested))
            return true;
    }
    return false;
}

}  // namespace atx::applier
