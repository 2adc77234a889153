// Lanes, batches, budgets and suspects (applier/dispatcher.h).
#include <catch2/catch.hpp>

#include <thread>

#include "dispatcher.h"

using namespace atx::applier;
using std::chrono::milliseconds;

namespace {

Id make_id(uint8_t a, uint8_t b = 0)
{
    Id id{};
    id[0] = a;
    id[1] = b;
    return id;
}

Pending msg(Lsn start, uint8_t lane, uint32_t role = 10, uint8_t depth = 0, bool waited = false)
{
    Pending p;
    p.start = start;
    p.end = start + 1;
    p.id = make_id(static_cast<uint8_t>(start), static_cast<uint8_t>(start >> 8));
    p.lane = make_id(0xee, lane);
    p.role_oid = role;
    p.depth = depth;
    p.waited = waited;
    p.emit_time = static_cast<int64_t>(start);
    return p;
}

std::vector<Lsn> starts(const Batch& b)
{
    std::vector<Lsn> v;
    for (const auto& p : b.items)
        v.push_back(p.start);
    return v;
}

}  // namespace

TEST_CASE("a lane's messages come in order, in one batch at a time", "[dispatcher]")
{
    Dispatcher d({3, 2});
    for (Lsn i = 1; i <= 5; ++i)
        d.add(msg(i, 1));
    auto b = d.take(WorkerKind::Regular, milliseconds(0));
    REQUIRE(b);
    CHECK(starts(*b) == std::vector<Lsn>{1, 2, 3});
    // The lane is leased: nobody else gets its next messages meanwhile.
    CHECK_FALSE(d.take(WorkerKind::Regular, milliseconds(0)));
    d.done(*b, 3);
    auto b2 = d.take(WorkerKind::Regular, milliseconds(0));
    REQUIRE(b2);
    CHECK(starts(*b2) == std::vector<Lsn>{4, 5});
    d.done(*b2, 2);
    CHECK(d.queued() == 0);
    CHECK(d.in_flight() == 0);
}

TEST_CASE("different lanes run in parallel; a blocked lane holds up only itself", "[dispatcher]")
{
    Dispatcher d({10, 4});
    d.add(msg(1, 1, 10));
    d.add(msg(2, 2, 20));
    d.add(msg(3, 1, 10));
    d.add(msg(4, 3, 30));
    auto a = d.take(WorkerKind::Regular, milliseconds(0));
    auto b = d.take(WorkerKind::Regular, milliseconds(0));
    auto c = d.take(WorkerKind::Regular, milliseconds(0));
    REQUIRE(a);
    REQUIRE(b);
    REQUIRE(c);
    CHECK(starts(*a) == std::vector<Lsn>{1, 3});
    CHECK(starts(*b) == std::vector<Lsn>{2});
    CHECK(starts(*c) == std::vector<Lsn>{4});
    // a is "stuck"; more messages of lane 2 still flow.
    d.done(*b, 1);
    d.add(msg(5, 2, 20));
    auto e = d.take(WorkerKind::Regular, milliseconds(0));
    REQUIRE(e);
    CHECK(starts(*e) == std::vector<Lsn>{5});
}

TEST_CASE("a role occupies at most its budget of regular sessions", "[dispatcher]")
{
    Dispatcher d({10, 2});
    for (uint8_t lane = 1; lane <= 4; ++lane)
        d.add(msg(lane, lane, 10));  // four sessions of one role
    d.add(msg(9, 9, 20));            // another role
    auto a = d.take(WorkerKind::Regular, milliseconds(0));
    auto b = d.take(WorkerKind::Regular, milliseconds(0));
    REQUIRE(a);
    REQUIRE(b);
    CHECK(a->role_oid == 10);
    CHECK(b->role_oid == 10);
    auto c = d.take(WorkerKind::Regular, milliseconds(0));
    REQUIRE(c);
    CHECK(c->role_oid == 20);  // role 10 is at its budget
    CHECK_FALSE(d.take(WorkerKind::Regular, milliseconds(0)));
    d.done(*a, 1);
    auto e = d.take(WorkerKind::Regular, milliseconds(0));
    REQUIRE(e);
    CHECK(e->role_oid == 10);
}

TEST_CASE("a transient failure backs off its lane only, and keeps the order", "[dispatcher]")
{
    Dispatcher d({10, 4});
    d.add(msg(1, 1));
    d.add(msg(2, 1));
    d.add(msg(3, 1));
    d.add(msg(4, 2));
    auto a = d.take(WorkerKind::Regular, milliseconds(0));
    REQUIRE(a);
    REQUIRE(starts(*a) == std::vector<Lsn>{1, 2, 3});
    // 1 applied, 2 failed transiently: 2 and 3 wait.
    d.retry_later(*a, 1, Clock::now() + milliseconds(150), 12345);
    auto b = d.take(WorkerKind::Regular, milliseconds(0));
    REQUIRE(b);
    CHECK(starts(*b) == std::vector<Lsn>{4});
    CHECK_FALSE(d.take(WorkerKind::Regular, milliseconds(20)));
    auto c = d.take(WorkerKind::Regular, milliseconds(500));
    REQUIRE(c);
    CHECK(starts(*c) == std::vector<Lsn>{2, 3});
    CHECK(c->items[0].attempts == 1);
    CHECK(c->items[0].first_failed_us == 12345);
    CHECK(c->items[1].attempts == 0);
}

TEST_CASE("after a lost backend the batch's messages run alone, one suspect at a time", "[dispatcher]")
{
    Dispatcher d({10, 4});
    d.add(msg(1, 1));
    d.add(msg(2, 1));
    d.add(msg(3, 2));
    d.add(msg(4, 2));
    auto a = d.take(WorkerKind::Regular, milliseconds(0));
    REQUIRE(a);
    CHECK(starts(*a) == std::vector<Lsn>{1, 2});
    d.lost(*a);
    CHECK(d.suspects() == 2);
    auto s1 = d.take(WorkerKind::Regular, milliseconds(0));
    REQUIRE(s1);
    // Lane 2 (no suspects) or the first suspect; take until the suspect shows up.
    std::optional<Batch> other;
    if (!s1->suspect) {
        other = s1;
        s1 = d.take(WorkerKind::Regular, milliseconds(0));
        REQUIRE(s1);
    }
    CHECK(s1->suspect);
    CHECK(starts(*s1) == std::vector<Lsn>{1});
    // Another suspect may not run meanwhile, even in another lane.
    auto none = d.take(WorkerKind::Regular, milliseconds(0));
    if (none)
        CHECK_FALSE(none->suspect);
    // It was lost again while alone: one loss counted against it.
    d.lost(*s1);
    auto s2 = d.take(WorkerKind::Regular, milliseconds(0));
    while (s2 && !s2->suspect)
        s2 = d.take(WorkerKind::Regular, milliseconds(0));
    REQUIRE(s2);
    CHECK(starts(*s2) == std::vector<Lsn>{1});
    CHECK(s2->items[0].losses == 1);
    d.done(*s2, 1);  // this time it ran
    auto s3 = d.take(WorkerKind::Regular, milliseconds(0));
    REQUIRE(s3);
    CHECK(s3->suspect);
    CHECK(starts(*s3) == std::vector<Lsn>{2});
    CHECK(s3->items[0].losses == 0);  // it was only in the first, unattributed loss
    d.done(*s3, 1);
    CHECK(d.suspects() == 0);
}

TEST_CASE("suspicion survives a new stream (the server crashed)", "[dispatcher]")
{
    Dispatcher d({10, 4});
    d.add(msg(1, 1));
    auto a = d.take(WorkerKind::Regular, milliseconds(0));
    REQUIRE(a);
    d.lost(*a);
    d.clear();
    d.add(msg(1, 1));  // sent again by the slot
    auto b = d.take(WorkerKind::Regular, milliseconds(0));
    REQUIRE(b);
    CHECK(b->suspect);
}

TEST_CASE("a connection that simply went counts only if the server restarted", "[dispatcher]")
{
    Dispatcher d({10, 4});
    d.add(msg(1, 1));
    auto a = d.take(WorkerKind::Regular, milliseconds(0));
    REQUIRE(a);
    // A network drop: reconnected to the same server, nothing is counted.
    d.lost_unexplained(*a, "start-1");
    CHECK(d.suspects() == 0);
    d.settle("start-1");
    auto b = d.take(WorkerKind::Regular, milliseconds(0));
    REQUIRE(b);
    CHECK_FALSE(b->suspect);
    // A dead backend: the server restarted; the message, already back in its lane, is a
    // suspect, and so is it when the new stream sends it again.
    d.lost_unexplained(*b, "start-1");
    d.settle("start-2");
    CHECK(d.suspects() == 1);
    auto c = d.take(WorkerKind::Regular, milliseconds(0));
    REQUIRE(c);
    CHECK(c->suspect);
    // Lost while it ran alone, then a new stream: one loss against it.
    d.lost_unexplained(*c, "start-2");
    d.clear();
    d.settle("start-3");
    d.add(msg(1, 1));
    auto e = d.take(WorkerKind::Regular, milliseconds(0));
    REQUIRE(e);
    CHECK(e->suspect);
    CHECK(e->items[0].losses == 1);
}

TEST_CASE("nested atx_exec messages may go to the nested pool, outside the role budget", "[dispatcher]")
{
    Dispatcher d({10, 1});
    d.add(msg(1, 1, 10));                  // the parent
    d.add(msg(2, 2, 10, 1, true));         // its nested, waited message, same role
    auto a = d.take(WorkerKind::Regular, milliseconds(0));
    REQUIRE(a);
    CHECK(starts(*a) == std::vector<Lsn>{1});
    CHECK_FALSE(d.take(WorkerKind::Regular, milliseconds(0)));  // the role's budget is spent
    CHECK(d.nested_waiting());
    auto n = d.take(WorkerKind::Nested, milliseconds(0));
    REQUIRE(n);
    CHECK(starts(*n) == std::vector<Lsn>{2});
    CHECK_FALSE(d.nested_waiting());
    d.done(*n, 1);
    d.done(*a, 1);
}

TEST_CASE("take waits for work and wakes when a message arrives; stop() ends the wait", "[dispatcher]")
{
    Dispatcher d({10, 2});
    std::thread t([&] {
        std::this_thread::sleep_for(milliseconds(50));
        d.add(msg(7, 1));
    });
    auto b = d.take(WorkerKind::Regular, milliseconds(2000));
    t.join();
    REQUIRE(b);
    CHECK(starts(*b) == std::vector<Lsn>{7});
    std::thread s([&] {
        std::this_thread::sleep_for(milliseconds(50));
        d.stop();
    });
    const auto t0 = Clock::now();
    CHECK_FALSE(d.take(WorkerKind::Regular, milliseconds(5000)));
    CHECK(Clock::now() - t0 < milliseconds(2000));
    s.join();
}

TEST_CASE("release gives a batch back for later, handled ones excepted", "[dispatcher]")
{
    Dispatcher d({10, 2});
    d.add(msg(1, 1));
    d.add(msg(2, 1));
    d.add(msg(3, 1));
    auto a = d.take(WorkerKind::Regular, milliseconds(0));
    REQUIRE(a);
    d.release_after(*a, 1, Clock::now() + milliseconds(50));
    CHECK(d.queued() == 2);
    CHECK_FALSE(d.take(WorkerKind::Regular, milliseconds(0)));
    auto b = d.take(WorkerKind::Regular, milliseconds(500));
    REQUIRE(b);
    CHECK(starts(*b) == std::vector<Lsn>{2, 3});
}
