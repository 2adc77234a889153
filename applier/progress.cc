// See progress.h.
#include "progress.h"

#include <algorithm>

namespace atx::applier {

namespace {

// Unknown commits taken by a stamp_begin() whose read has not come back yet.
constexpr Lsn kStamping = Progress::kCommitUnknown - 1;

template <class Multimap>
void rekey(Multimap& m, Lsn from, Lsn to)
{
    auto range = m.equal_range(from);
    std::vector<typename Multimap::mapped_type> moved;
    for (auto it = range.first; it != range.second; ++it)
        moved.push_back(it->second);
    m.erase(range.first, range.second);
    for (auto& v : moved)
        m.emplace(to, v);
}

}  // namespace

void Progress::reset(Lsn confirmed)
{
    pending_.clear();
    live_ = 0;
    not_durable_.clear();
    unknown_.clear();
    stamping_.clear();
    stamped_.clear();
    waiting_ = 0;
    untracked_.clear();
    woken_.clear();
    confirmed_ = confirmed;
    received_end_ = confirmed;
    keepalive_ = confirmed;
    // durable_ is kept: a commit that was durable stays durable.
}

std::deque<Progress::Entry>::iterator Progress::lower(Lsn start)
{
    return std::lower_bound(pending_.begin(), pending_.end(), start, [](const Entry& e, Lsn s) { return e.start < s; });
}

Progress::Entry* Progress::find(Lsn start)
{
    auto it = lower(start);
    return it != pending_.end() && it->start == start ? &*it : nullptr;
}

void Progress::received(Lsn start, Lsn end)
{
    received_end_ = std::max(received_end_, end);
    if (pending_.empty() || pending_.back().start < start) {
        pending_.push_back(Entry{start});
        ++live_;
        return;
    }
    // Out of stream order: a parked copy the unsent-message check found (database_worker.cc).
    auto it = lower(start);
    if (it != pending_.end() && it->start == start) {
        if (it->state != State::Done)
            return;  // known already
        *it = Entry{start};
    } else {
        pending_.insert(it, Entry{start});
    }
    ++live_;
}

void Progress::keepalive(Lsn wal_end) { keepalive_ = std::max(keepalive_, wal_end); }

void Progress::handled(Lsn start, Lsn commit_lsn, bool waited, const Id& id)
{
    Entry* e = find(start);
    if (e == nullptr || e->state != State::Pending) {
        // Parked while it ran: the slot passed it when its copy was durable; its caller is still
        // told once this commit is.
        if (waited)
            handled_untracked(commit_lsn, id);
        return;
    }
    e->state = State::Handled;
    e->waited = waited;
    e->id = id;
    if (commit_lsn <= durable_) {
        finish(*e);
        return;
    }
    ++waiting_;
    if (commit_lsn == kCommitUnknown)
        unknown_.push_back(start);
    else
        not_durable_.emplace(commit_lsn, start);
}

void Progress::handled_untracked(Lsn commit_lsn, const Id& id)
{
    if (commit_lsn <= durable_)
        woken_.push_back(id);
    else
        untracked_.emplace(commit_lsn, id);
}

void Progress::durable_upto(Lsn lsn)
{
    durable_ = std::max(durable_, lsn);
    while (!untracked_.empty() && untracked_.begin()->first <= durable_) {
        woken_.push_back(untracked_.begin()->second);
        untracked_.erase(untracked_.begin());
    }
    while (!not_durable_.empty() && not_durable_.begin()->first <= durable_) {
        const Lsn start = not_durable_.begin()->second;
        not_durable_.erase(not_durable_.begin());
        --waiting_;
        finish_start(start);
    }
    while (!stamped_.empty() && stamped_.front().at <= durable_) {
        for (Lsn start : stamped_.front().starts) {
            --waiting_;
            finish_start(start);
        }
        stamped_.pop_front();
    }
}

void Progress::stamp_begin()
{
    stamping_.insert(stamping_.end(), unknown_.begin(), unknown_.end());
    unknown_.clear();
    rekey(untracked_, kCommitUnknown, kStamping);
}

void Progress::stamp_end(Lsn insert_lsn)
{
    // A read that failed left its entries stamping: this later position stands for them too.
    if (!stamping_.empty()) {
        // Never before an earlier stamp: the flush reaches them in order (a smaller position,
        // which a stream does not give, only waits longer).
        const Lsn at = stamped_.empty() ? insert_lsn : std::max(insert_lsn, stamped_.back().at);
        stamped_.push_back(Stamped{at, std::move(stamping_)});
        stamping_.clear();
    }
    rekey(untracked_, kStamping, insert_lsn);
    durable_upto(durable_);
}

Lsn Progress::oldest_stamped() const
{
    Lsn oldest = 0;
    for (Lsn l : {not_durable_.empty() ? 0 : not_durable_.begin()->first, stamped_.empty() ? 0 : stamped_.front().at,
                  untracked_.empty() ? 0 : untracked_.begin()->first})
        if (l != 0 && l < kStamping && (oldest == 0 || l < oldest))
            oldest = l;
    return oldest;
}

void Progress::finish_start(Lsn start)
{
    if (Entry* e = find(start); e != nullptr && e->state == State::Handled)
        finish(*e);
}

void Progress::finish(Entry& e)
{
    if (e.waited)
        woken_.push_back(e.id);
    e.state = State::Done;
    --live_;
    while (!pending_.empty() && pending_.front().state == State::Done)
        pending_.pop_front();
}

Lsn Progress::confirm_position() const
{
    Lsn safe;
    if (!pending_.empty())
        safe = pending_.front().start;
    else
        safe = std::max(received_end_, keepalive_);
    // Never backwards: the slot ignores that anyway, but the metric must not lie.
    return std::max(safe, confirmed_);
}

std::vector<Id> Progress::take_durable_waited()
{
    std::vector<Id> out;
    out.swap(woken_);
    return out;
}

}  // namespace atx::applier
