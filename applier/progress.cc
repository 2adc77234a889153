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
    not_durable_.clear();
    untracked_.clear();
    woken_.clear();
    confirmed_ = confirmed;
    received_end_ = confirmed;
    keepalive_ = confirmed;
    // durable_ is kept: a commit that was durable stays durable.
}

void Progress::received(Lsn start, Lsn end)
{
    pending_.emplace(start, Entry{});
    received_end_ = std::max(received_end_, end);
}

void Progress::keepalive(Lsn wal_end) { keepalive_ = std::max(keepalive_, wal_end); }

void Progress::handled(Lsn start, Lsn commit_lsn, bool waited, const Id& id)
{
    auto it = pending_.find(start);
    if (it == pending_.end() || it->second.handled) {
        // Parked while it ran: the slot passed it when its copy was durable; its caller is still
        // told once this commit is.
        if (waited)
            handled_untracked(commit_lsn, id);
        return;
    }
    it->second.handled = true;
    it->second.waited = waited;
    it->second.id = id;
    if (commit_lsn <= durable_)
        finish(it);
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
        auto it = pending_.find(not_durable_.begin()->second);
        not_durable_.erase(not_durable_.begin());
        if (it != pending_.end())
            finish(it);
    }
}

void Progress::stamp_begin()
{
    rekey(not_durable_, kCommitUnknown, kStamping);
    rekey(untracked_, kCommitUnknown, kStamping);
}

void Progress::stamp_end(Lsn insert_lsn)
{
    // A read that failed left its entries at kStamping: this later position stands for them too.
    rekey(not_durable_, kStamping, insert_lsn);
    rekey(untracked_, kStamping, insert_lsn);
    durable_upto(durable_);
}

Lsn Progress::oldest_stamped() const
{
    Lsn oldest = 0;
    for (Lsn l :
         {not_durable_.empty() ? 0 : not_durable_.begin()->first, untracked_.empty() ? 0 : untracked_.begin()->first})
        if (l != 0 && l < kStamping && (oldest == 0 || l < oldest))
            oldest = l;
    return oldest;
}

void Progress::finish(std::map<Lsn, Entry>::iterator it)
{
    if (it->second.waited)
        woken_.push_back(it->second.id);
    pending_.erase(it);
}

Lsn Progress::confirm_position() const
{
    Lsn safe;
    if (!pending_.empty())
        safe = pending_.begin()->first;
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
