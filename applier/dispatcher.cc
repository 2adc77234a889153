// See dispatcher.h.
#include "dispatcher.h"

#include <algorithm>

namespace atx::applier {

size_t IdHash::operator()(const Id& id) const noexcept
{
    size_t h = 1469598103934665603ULL;
    for (uint8_t b : id)
        h = (h ^ b) * 1099511628211ULL;
    return h;
}

static bool nested_head(const std::deque<Pending>& q) { return !q.empty() && q.front().depth > 0 && q.front().waited; }

void Dispatcher::add(Pending p)
{
    std::lock_guard<std::mutex> lock(mu_);
    if (auto s = suspicion_.find(p.id); s != suspicion_.end()) {
        p.suspect = true;
        p.losses = s->second.losses;
    }
    Lane& l = lanes_[p.lane];
    const bool was_empty = l.q.empty();
    l.role_oid = p.role_oid;
    const Id lane_id = p.lane;
    l.q.push_back(std::move(p));
    if (was_empty && !l.leased) {
        if (l.not_before > Clock::now())
            delayed_.emplace(l.not_before, lane_id);
        else
            ready_.push_back(lane_id);
        cv_.notify_one();
    }
}

bool Dispatcher::eligible(const Lane& l, WorkerKind kind) const
{
    if (l.leased || l.q.empty())
        return false;
    if (l.q.front().suspect && suspect_running_)
        return false;
    if (kind == WorkerKind::Nested)
        return nested_head(l.q);
    auto busy = role_busy_.find(l.role_oid);
    return busy == role_busy_.end() || busy->second < opt_.role_budget;
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

std::optional<Batch> Dispatcher::take(WorkerKind kind, std::chrono::milliseconds wait)
{
    std::unique_lock<std::mutex> lock(mu_);
    const auto deadline = Clock::now() + wait;
    // What a give-back left for the others, once this worker has taken its own share.
    auto pass_on = [this]() {
        if (wake_pending_) {
            wake_pending_ = false;
            if (any_eligible_locked())
                cv_.notify_all();
        }
    };
    for (;;) {
        if (stopped_)
            return std::nullopt;
        const auto now = Clock::now();
        promote_due(now);
        for (auto r = ready_.begin(); r != ready_.end(); ++r) {
            auto it = lanes_.find(*r);
            if (it == lanes_.end() || it->second.q.empty()) {
                continue;  // stale entry; dropped below when found eligible elsewhere
            }
            Lane& l = it->second;
            if (!eligible(l, kind))
                continue;
            Batch b;
            b.lane = *r;
            b.role_oid = l.role_oid;
            ready_.erase(r);
            l.leased = true;
            if (l.q.front().suspect) {
                // A suspect runs alone: a loss now can only be its doing.
                b.suspect = true;
                suspect_running_ = true;
                b.items.push_back(std::move(l.q.front()));
                l.q.pop_front();
            } else {
                while (!l.q.empty() && b.items.size() < opt_.batch_size && !l.q.front().suspect) {
                    b.items.push_back(std::move(l.q.front()));
                    l.q.pop_front();
                }
            }
            if (kind == WorkerKind::Regular)
                ++role_busy_[l.role_oid];
            else
                b.role_oid = 0;  // the nested pool is outside the role budget
            in_flight_ += b.items.size();
            pass_on();
            return b;
        }
        // Drop stale entries (lanes that vanished or emptied) so the scan stays short.
        ready_.erase(std::remove_if(ready_.begin(), ready_.end(),
                                    [&](const Id& id) {
                                        auto it = lanes_.find(id);
                                        return it == lanes_.end() || it->second.q.empty() || it->second.leased;
                                    }),
                     ready_.end());
        auto until = deadline;
        if (!delayed_.empty())
            until = std::min(until, delayed_.begin()->first);
        pass_on();
        if (now >= deadline)
            return std::nullopt;
        cv_.wait_until(lock, until);
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
        if (it != lanes_.end() && (eligible(it->second, WorkerKind::Regular) || eligible(it->second, WorkerKind::Nested)))
            return true;
    }
    return false;
}

void Dispatcher::wake_others()
{
    std::lock_guard<std::mutex> lock(mu_);
    if (wake_pending_) {
        wake_pending_ = false;
        cv_.notify_all();
    }
}

// Caller holds the lock. Puts b's items from `from` on back at the front of their lane and
// ends the lease.
void Dispatcher::give_back(const Batch& b, size_t from, Clock::time_point when)
{
    Lane& l = lanes_[b.lane];
    for (size_t i = b.items.size(); i > from; --i) {
        Pending p = b.items[i - 1];
        if (auto s = suspicion_.find(p.id); s != suspicion_.end()) {
            p.suspect = true;
            p.losses = s->second.losses;
        }
        l.q.push_front(std::move(p));
    }
    l.role_oid = l.q.empty() ? l.role_oid : l.q.front().role_oid;
    l.not_before = when;
    in_flight_ -= b.items.size();
    // Nested batches carry role 0: they were never counted.
    auto busy = role_busy_.find(b.role_oid);
    if (busy != role_busy_.end() && busy->second > 0 && --busy->second == 0)
        role_busy_.erase(busy);
    if (b.suspect)
        suspect_running_ = false;
    requeue(b.lane, l);
}

void Dispatcher::done(const Batch& b, size_t n)
{
    std::lock_guard<std::mutex> lock(mu_);
    for (size_t i = 0; i < n && i < b.items.size(); ++i)
        suspicion_.erase(b.items[i].id);
    give_back(b, std::min(n, b.items.size()), Clock::time_point{});
}

void Dispatcher::retry_later(const Batch& b, size_t n, Clock::time_point when, int64_t now_us)
{
    std::lock_guard<std::mutex> lock(mu_);
    Batch copy = b;
    for (size_t i = 0; i < n && i < copy.items.size(); ++i)
        suspicion_.erase(copy.items[i].id);
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
    for (size_t i = 0; i < n && i < b.items.size(); ++i)
        suspicion_.erase(b.items[i].id);
    give_back(b, std::min(n, b.items.size()), when);
}

// Caller holds the lock.
void Dispatcher::suspect_locked(const std::vector<Id>& ids, bool alone, uint32_t losses)
{
    if (alone && !ids.empty()) {
        uint32_t& n = suspicion_[ids[0]].losses;
        n = std::max(n, losses) + 1;
    } else {
        for (const auto& id : ids)
            suspicion_.emplace(id, Suspicion{});
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
    suspect_locked(ids_of(b), b.suspect, b.items.empty() ? 0 : b.items[0].losses);
    give_back(b, 0, Clock::time_point{});  // picks the suspicion up again
}

void Dispatcher::lost_unexplained(const Batch& b, const std::string& server_start)
{
    std::lock_guard<std::mutex> lock(mu_);
    unexplained_.push_back(
        Unexplained{ids_of(b), b.suspect, b.items.empty() ? 0 : b.items[0].losses, server_start});
    give_back(b, 0, Clock::time_point{});
}

void Dispatcher::settle(const std::string& server_start)
{
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& u : unexplained_)
        if (u.server_start != server_start)
            suspect_locked(u.ids, u.suspect, u.losses);
    unexplained_.clear();
    // Messages already back in their lanes learn it now.
    for (auto& [id, l] : lanes_)
        for (auto& p : l.q)
            if (auto s = suspicion_.find(p.id); s != suspicion_.end()) {
                p.suspect = true;
                p.losses = s->second.losses;
            }
}

void Dispatcher::clear()
{
    std::lock_guard<std::mutex> lock(mu_);
    lanes_.clear();
    ready_.clear();
    delayed_.clear();
    role_busy_.clear();
    suspect_running_ = false;
    in_flight_ = 0;
    stopped_ = false;
}

void Dispatcher::stop()
{
    std::lock_guard<std::mutex> lock(mu_);
    stopped_ = true;
    cv_.notify_all();
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
    return suspicion_.size();
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
        if (it != lanes_.end() && !it->second.leased && nested_head(it->second.q))
            return true;
    }
    return false;
}

}  // namespace atx::applier
