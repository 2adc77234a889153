// What may be confirmed to the slot (applier/progress.h): never past a message that is not
// both handled and durable, whatever order the apply sessions finish in.
#include <catch2/catch.hpp>

#include "progress.h"

using namespace atx::applier;

TEST_CASE("nothing pending: the end of what was received, or a later keepalive", "[progress]")
{
    Progress p;
    p.reset(100);
    CHECK(p.confirm_position() == 100);
    p.keepalive(150);
    CHECK(p.confirm_position() == 150);
    p.received(160, 200);
    CHECK(p.confirm_position() == 160);  // pending: its start
    p.handled(160, 0);
    CHECK(p.confirm_position() == 200);
    p.keepalive(180);  // older than what was received: ignored
    CHECK(p.confirm_position() == 200);
}

TEST_CASE("out of order handling confirms only the contiguous prefix", "[progress]")
{
    Progress p;
    p.reset(0);
    p.received(10, 20);
    p.received(20, 30);
    p.received(30, 40);
    p.handled(30, 0);  // the last one first (another lane)
    CHECK(p.confirm_position() == 10);
    p.handled(10, 0);
    CHECK(p.confirm_position() == 20);
    p.handled(20, 0);
    CHECK(p.confirm_position() == 40);
    CHECK(p.pending() == 0);
}

TEST_CASE("a handled message waits for its commit to be durable", "[progress]")
{
    Progress p;
    p.reset(0);
    p.received(10, 20);
    p.received(20, 30);
    p.handled(10, 500);
    p.handled(20, 400);
    CHECK(p.confirm_position() == 10);
    CHECK(p.not_durable() == 2);
    p.durable_upto(450);  // the second commit is durable, the first not yet
    CHECK(p.confirm_position() == 10);
    CHECK(p.not_durable() == 1);
    p.durable_upto(500);
    CHECK(p.confirm_position() == 30);
    CHECK(p.not_durable() == 0);
    // Durable before it was handled: finished at once.
    p.received(30, 40);
    p.handled(30, 480);
    CHECK(p.confirm_position() == 40);
}

TEST_CASE("the confirmed position never moves back", "[progress]")
{
    Progress p;
    p.reset(1000);
    p.received(1000, 1100);
    CHECK(p.confirm_position() == 1000);
    p.handled(1000, 0);
    CHECK(p.confirm_position() == 1100);
    p.received(1100, 1200);
    CHECK(p.confirm_position() == 1100);
}

TEST_CASE("waited messages are reported once their commit is durable", "[progress]")
{
    Progress p;
    p.reset(0);
    Id a{}, b{};
    a[0] = 1;
    b[0] = 2;
    p.received(10, 20);
    p.received(20, 30);
    p.handled(10, 100, true, a);
    p.handled(20, 200, true, b);
    CHECK(p.take_durable_waited().empty());
    p.durable_upto(150);
    auto w = p.take_durable_waited();
    REQUIRE(w.size() == 1);
    CHECK(w[0] == a);
    CHECK(p.take_durable_waited().empty());
    p.durable_upto(200);
    w = p.take_durable_waited();
    REQUIRE(w.size() == 1);
    CHECK(w[0] == b);
}

TEST_CASE("a second handled() of the same message changes nothing; unknown starts are ignored", "[progress]")
{
    Progress p;
    p.reset(0);
    p.received(10, 20);
    p.handled(10, 100);
    p.handled(10, 0);  // already handled: keeps waiting for 100
    CHECK(p.confirm_position() == 10);
    p.handled(999, 0);
    CHECK(p.pending() == 1);
    p.durable_upto(100);
    CHECK(p.confirm_position() == 20);
}

TEST_CASE("reset starts a new stream and keeps what is known to be durable", "[progress]")
{
    Progress p;
    p.reset(0);
    p.received(10, 20);
    p.durable_upto(300);
    p.reset(10);
    CHECK(p.pending() == 0);
    CHECK(p.confirm_position() == 10);
    p.received(10, 20);
    p.handled(10, 250);
    CHECK(p.confirm_position() == 20);  // 250 <= 300: durable
}

TEST_CASE("many messages in random completion order", "[progress]")
{
    Progress p;
    p.reset(0);
    const int n = 2000;
    for (int i = 0; i < n; ++i)
        p.received(static_cast<Lsn>(i * 10 + 10), static_cast<Lsn>(i * 10 + 20));
    // Handle the odd ones, then the even ones backwards: the position follows the lowest gap.
    for (int i = 1; i < n; i += 2)
        p.handled(static_cast<Lsn>(i * 10 + 10), 0);
    CHECK(p.confirm_position() == 10);
    for (int i = n - 2; i >= 0; i -= 2) {
        p.handled(static_cast<Lsn>(i * 10 + 10), 0);
        CHECK(p.confirm_position() == static_cast<Lsn>(i == 0 ? n * 10 + 10 : 10));
    }
}

TEST_CASE("a parked message is passed once its copy is durable; its waiter is woken by its run's commit", "[progress]")
{
    Progress p;
    p.reset(0);
    p.received(10, 20);  // parked: the park's commit ends at 300
    p.received(20, 30);
    p.handled(10, 300);
    p.handled(20, 310);
    p.durable_upto(320);
    CHECK(p.confirm_position() == 30);  // the slot may pass it although it has not run
    Id id{};
    id[0] = 7;
    p.handled_untracked(900, id);  // its run commits later, and an atx_exec caller waits
    CHECK(p.not_durable() == 1);
    CHECK(p.take_durable_waited().empty());
    p.durable_upto(899);
    CHECK(p.take_durable_waited().empty());
    p.durable_upto(900);
    CHECK(p.take_durable_waited() == std::vector<Id>{id});
    CHECK(p.not_durable() == 0);
}

TEST_CASE("a message parked while it ran: its run's handled() wakes its waiter once that commit is durable",
          "[progress]")
{
    Progress p;
    p.reset(0);
    p.received(10, 20);
    p.received(20, 30);
    p.handled(10, 50);  // parked while it ran: its copy commits at 50
    p.durable_upto(50);
    CHECK(p.confirm_position() == 20);
    Id id{};
    id[0] = 9;
    p.handled(10, 900, true, id);  // its run commits at 900; an atx_exec caller waits
    CHECK(p.take_durable_waited().empty());
    p.durable_upto(900);
    CHECK(p.take_durable_waited() == std::vector<Id>{id});
    // Not waited: nothing to tell anyone, and nothing else changes.
    p.handled(10, 950);
    p.durable_upto(950);
    CHECK(p.take_durable_waited().empty());
    CHECK(p.confirm_position() == 20);
}

TEST_CASE("a commit whose end was not read waits for an insert position read after it", "[progress]")
{
    const Lsn unknown = Progress::kCommitUnknown;
    Progress p;
    p.reset(0);
    p.received(10, 20);
    p.received(20, 30);
    p.received(30, 40);
    Id waited{};
    waited[0] = 3;
    p.handled(10, unknown, true, waited);
    p.durable_upto(1000000);  // any flush position: the commit's end is not known yet
    CHECK(p.confirm_position() == 10);
    CHECK(p.not_durable() == 1);

    p.stamp_begin();         // the poll is about to read the insert position
    p.handled(20, unknown);  // committed after that read was sent: it must not get its position
    p.stamp_end(2000000);
    CHECK(p.confirm_position() == 10);  // 2000000 is not durable yet
    p.durable_upto(2000000);
    CHECK(p.confirm_position() == 20);  // 10 passed; 20 waits for the next round
    CHECK(p.take_durable_waited() == std::vector<Id>{waited});
    p.durable_upto(5000000);
    CHECK(p.confirm_position() == 20);

    p.stamp_begin();
    p.stamp_end(3000000);  // at or below what is durable already: finished at once
    CHECK(p.confirm_position() == 30);
    p.handled(30, unknown);
    CHECK(p.confirm_position() == 30);
    CHECK(p.not_durable() == 1);
    CHECK(p.oldest_stamped() == 0);  // not stamped yet: nothing to nudge for
    p.stamp_begin();
    CHECK(p.oldest_stamped() == 0);
    p.stamp_end(6000000);
    CHECK(p.oldest_stamped() == 6000000);
}

TEST_CASE("a stamp whose read failed is covered by the next one", "[progress]")
{
    Progress p;
    const Id parked_waiter{5};
    p.reset(0);
    p.received(10, 20);
    p.handled(10, Progress::kCommitUnknown);
    p.handled_untracked(Progress::kCommitUnknown, parked_waiter);  // parked while it ran, its caller waits
    p.stamp_begin();                                               // its read failed: no stamp_end
    p.stamp_begin();
    p.stamp_end(700);
    p.durable_upto(699);
    CHECK(p.confirm_position() == 10);
    CHECK(p.take_durable_waited().empty());
    p.durable_upto(700);
    CHECK(p.confirm_position() == 20);
    CHECK(p.take_durable_waited() == std::vector<Id>{parked_waiter});
    CHECK(p.not_durable() == 0);
}

TEST_CASE("a message received out of stream order (a parked copy found later) is held in its place", "[progress]")
{
    Progress p;
    p.reset(0);
    p.received(100, 110);
    p.received(200, 210);
    p.received(50, 50);  // below both: the unsent-message check's parked copy
    CHECK(p.pending() == 3);
    CHECK(p.confirm_position() == 50);
    p.handled(100, 0);
    CHECK(p.confirm_position() == 50);
    p.received(150, 150);  // between two
    p.handled(50, 0);
    CHECK(p.confirm_position() == 150);
    p.received(150, 150);  // again while pending: nothing new
    CHECK(p.pending() == 2);
    p.handled(150, 0);
    CHECK(p.confirm_position() == 200);
    p.received(150, 150);  // again after it was handled: pending again, below the rest
    CHECK(p.confirm_position() == 150);
    p.handled(150, 0);
    p.handled(200, 0);
    CHECK(p.confirm_position() == 210);
    CHECK(p.pending() == 0);
}

TEST_CASE("stamps in order: each covers the unknown commits handled before it, none after", "[progress]")
{
    Progress p;
    p.reset(0);
    for (Lsn s = 10; s <= 100; s += 10)
        p.received(s, s + 10);
    // Five handled before the first stamp, three between its begin and end (the next one's),
    // two after both.
    for (Lsn s : {50, 10, 30, 20, 40})
        p.handled(s, Progress::kCommitUnknown);
    p.stamp_begin();
    for (Lsn s : {60, 80, 70})
        p.handled(s, Progress::kCommitUnknown);
    p.stamp_end(1000);
    p.stamp_begin();
    p.stamp_end(2000);
    for (Lsn s : {90, 100})
        p.handled(s, Progress::kCommitUnknown);
    CHECK(p.not_durable() == 10);
    CHECK(p.oldest_stamped() == 1000);
    p.durable_upto(1999);
    CHECK(p.confirm_position() == 60);
    CHECK(p.not_durable() == 5);
    p.durable_upto(2000);
    CHECK(p.confirm_position() == 90);
    CHECK(p.oldest_stamped() == 0);  // the last two have no stamp yet
    CHECK(p.not_durable() == 2);
    p.stamp_begin();
    p.stamp_end(1500);  // an earlier position than a stamp before: waits for that one too
    p.durable_upto(2000);
    CHECK(p.confirm_position() == 110);
    CHECK(p.pending() == 0);
}
