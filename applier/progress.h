// What may be confirmed to the slot (pure; tests/unit/test_progress.cc).
//
// Messages are handled out of stream order (several apply sessions, one lane per caller), so
// the position confirmed to the slot is the start of the oldest message that is not yet both
// handled and durable. Everything before it was applied, dead-lettered or found handled, by a
// commit that survives what the durability rule covers (docs/applier.md):
//
//   confirm = start of the oldest pending message                  if any is pending
//           = max(end of the last message received, keepalive walEnd)  otherwise
//
// and it never moves back. A message is pending from received() until handled() and then until
// durable_upto() reaches the commit that handled it. The slot resends from the confirmed
// position after a reconnect; the server refuses what it handled before (atx.applied).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <map>
#include <vector>

namespace atx::applier {

using Lsn = uint64_t;
using Id = std::array<uint8_t, 16>;

class Progress {
public:
    // A new stream starting at the slot's confirmed position.
    void reset(Lsn confirmed);

    // A message arrived: its WAL record spans [start, end).
    void received(Lsn start, Lsn end);
    // Everything the walsender has decoded up to wal_end has been sent.
    void keepalive(Lsn wal_end);
    // The message at start was handled by a commit that ends at or before commit_lsn. waited:
    // an atx_exec caller is told once that commit is durable (take_durable_waited), also when
    // the start is handled or unknown already (parked while it ran).
    void handled(Lsn start, Lsn commit_lsn, bool waited = false, const Id& id = {});
    // A message this stream no longer tracks (parked: the slot passed it once its copy was
    // durable) was handled by a commit ending at or before commit_lsn, and an atx_exec caller
    // waits for it: told once that commit is durable.
    void handled_untracked(Lsn commit_lsn, const Id& id);
    // Commits up to lsn are durable (flushed; on the standbys when that is the rule).
    void durable_upto(Lsn lsn);

    // A commit whose end was not read (an apply batch does not ask for it: a query per batch,
    // a tenth of an apply backend's time at one message per batch). Any WAL insert position read
    // after the commit returned is at or past its end and stands for it: stamp_begin() right
    // before that read, stamp_end() with what it read. A message handled in between waits for
    // the next round, so a position read before its commit never stands for it.
    static constexpr Lsn kCommitUnknown = ~Lsn{0};
    void stamp_begin();
    void stamp_end(Lsn insert_lsn);

    Lsn confirm_position() const;
    // Ids of waited messages whose commit became durable since the last call.
    std::vector<Id> take_durable_waited();

    size_t pending() const { return live_; }
    // The oldest message still pending (0 when none).
    Lsn oldest_pending() const { return pending_.empty() ? 0 : pending_.front().start; }
    Lsn durable() const { return durable_; }
    Lsn received_end() const { return received_end_; }
    // Handled but waiting for durability.
    size_t not_durable() const { return waiting_ + untracked_.size(); }
    // The lowest commit position waited for that a stamp has set (0: none).
    Lsn oldest_stamped() const;

private:
    // Every message of a drain passes through here, tens of thousands a second: a deque in stream
    // order and vectors of unknown commits, not a tree node per message and another per commit
    // (which, rekeyed at every stamp, took 14% of the applier's CPU in a drain).
    enum class State : uint8_t { Pending, Handled, Done };
    struct Entry {
        Lsn start = 0;
        State state = State::Pending;
        bool waited = false;
        Id id{};
    };
    // Messages handled by commits a stamp stands for: durable once the flush reaches `at`.
    struct Stamped {
        Lsn at = 0;
        std::vector<Lsn> starts;
    };
    std::deque<Entry>::iterator lower(Lsn start);  // the first entry at or after start
    Entry* find(Lsn start);
    void finish(Entry& e);
    void finish_start(Lsn start);

    // By start LSN, ascending (the stream's order; a parked copy found later is inserted in
    // place). Done entries stay until they reach the front, so the front is the oldest pending.
    std::deque<Entry> pending_;
    size_t live_ = 0;                      // entries of pending_ not done
    std::multimap<Lsn, Lsn> not_durable_;  // known commit LSN -> start LSN of handled messages
    std::vector<Lsn> unknown_;             // starts handled by commits of unknown end (kCommitUnknown)
    std::vector<Lsn> stamping_;            // those a stamp_begin() took; its read has not come back
    std::deque<Stamped> stamped_;          // ascending by `at`
    size_t waiting_ = 0;                   // starts in not_durable_, unknown_, stamping_ and stamped_
    std::multimap<Lsn, Id> untracked_;     // commit LSN -> waited parked messages
    std::vector<Id> woken_;
    Lsn confirmed_ = 0;
    Lsn received_end_ = 0;
    Lsn keepalive_ = 0;
    Lsn durable_ = 0;
};

}  // namespace atx::applier
