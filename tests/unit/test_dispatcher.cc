// Lanes, batches, budgets and suspects (applier/dispatcher.h).
#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <functional>
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

Id id_of(Lsn start) { return make_id(static_cast<uint8_t>(start), static_cast<uint8_t>(start >> 8)); }

Pending msg(Lsn start, uint8_t lane, uint32_t role = 10, uint8_t depth = 0, bool waited = false, uint32_t principal = 0)
{
    Pending p;
    p.start = start;
    p.end = start + 1;
    p.id = id_of(start);
    p.lane = make_id(0xee, lane);
    p.as = RunAs{role, principal ? principal : role};
    p.depth = depth;
    p.waited = waited;
    p.emit_time = static_cast<int64_t>(start);
    return p;
}

// A nested atx_exec message whose parent is the message at parent_start (its lane is the parent).
Pending nested(Lsn start, Lsn parent_start, uint32_t role = 10, uint32_t principal = 0)
{
    Pending p = msg(start, 0, role, 1, true, principal);
    p.lane = id_of(parent_start);
    return p;
}

const std::optional<RunAs> any;  // a fresh session: no preference

Dispatcher::Options background_workers(size_t total, size_t per_principal)
{
    Dispatcher::Options o;
    o.nonatomic_total = total;
    o.nonatomic_per_principal = per_principal;
    return o;
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
    auto b = d.take(WorkerKind::Regular, any, milliseconds(0));
    REQUIRE(b);
    CHECK(starts(*b) == std::vector<Lsn>{1, 2, 3});
    // The lane is leased: nobody else gets its next messages meanwhile.
    CHECK_FALSE(d.take(WorkerKind::Regular, any, milliseconds(0)));
    d.done(*b, 3);
    auto b2 = d.take(WorkerKind::Regular, any, milliseconds(0));
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
    auto a = d.take(WorkerKind::Regular, any, milliseconds(0));
    auto b = d.take(WorkerKind::Regular, any, milliseconds(0));
    auto c = d.take(WorkerKind::Regular, any, milliseconds(0));
    REQUIRE(a);
    REQUIRE(b);
    REQUIRE(c);
    CHECK(starts(*a) == std::vector<Lsn>{1, 3});
    CHECK(starts(*b) == std::vector<Lsn>{2});
    CHECK(starts(*c) == std::vector<Lsn>{4});
    // a is "stuck"; more messages of lane 2 still flow.
    d.done(*b, 1);
    d.add(msg(5, 2, 20));
    auto e = d.take(WorkerKind::Regular, any, milliseconds(0));
    REQUIRE(e);
    CHECK(starts(*e) == std::vector<Lsn>{5});
}

TEST_CASE("a principal occupies at most its budget of regular sessions", "[dispatcher]")
{
    Dispatcher d({10, 2});
    for (uint8_t lane = 1; lane <= 4; ++lane)
        d.add(msg(lane, lane, 10));  // four sessions of one role
    d.add(msg(9, 9, 20));            // another role
    auto a = d.take(WorkerKind::Regular, any, milliseconds(0));
    auto b = d.take(WorkerKind::Regular, any, milliseconds(0));
    REQUIRE(a);
    REQUIRE(b);
    CHECK(a->as.principal_oid == 10);
    CHECK(b->as.principal_oid == 20);  // the principal with fewer sessions first
    auto c = d.take(WorkerKind::Regular, any, milliseconds(0));
    REQUIRE(c);
    CHECK(c->as.principal_oid == 10);
    CHECK_FALSE(d.take(WorkerKind::Regular, any, milliseconds(0)));  // role 10 is at its budget
    d.done(*a, 1);
    auto e = d.take(WorkerKind::Regular, any, milliseconds(0));
    REQUIRE(e);
    CHECK(e->as.principal_oid == 10);
}

TEST_CASE("a transient failure backs off its lane only, and keeps the order", "[dispatcher]")
{
    Dispatcher d({10, 4});
    d.add(msg(1, 1));
    d.add(msg(2, 1));
    d.add(msg(3, 1));
    d.add(msg(4, 2));
    auto a = d.take(WorkerKind::Regular, any, milliseconds(0));
    REQUIRE(a);
    REQUIRE(starts(*a) == std::vector<Lsn>{1, 2, 3});
    // 1 applied, 2 failed transiently: 2 and 3 wait.
    d.retry_later(*a, 1, Clock::now() + milliseconds(150), 12345);
    auto b = d.take(WorkerKind::Regular, any, milliseconds(0));
    REQUIRE(b);
    CHECK(starts(*b) == std::vector<Lsn>{4});
    CHECK_FALSE(d.take(WorkerKind::Regular, any, milliseconds(20)));
    auto c = d.take(WorkerKind::Regular, any, milliseconds(500));
    REQUIRE(c);
    // The retried message runs alone (its time limit is what is left of its retry window).
    CHECK(starts(*c) == std::vector<Lsn>{2});
    CHECK(c->items[0].attempts == 1);
    CHECK(c->items[0].first_failed_us == 12345);
    d.done(*c, 1);
    auto e = d.take(WorkerKind::Regular, any, milliseconds(0));
    REQUIRE(e);
    CHECK(starts(*e) == std::vector<Lsn>{3});
    CHECK(e->items[0].attempts == 0);
}

TEST_CASE("a message whose top-level run was deferred comes back alone, still marked", "[dispatcher]")
{
    Dispatcher d({10, 4});
    d.add(msg(1, 1));
    d.add(msg(2, 1));
    d.add(msg(3, 1));
    auto a = d.take(WorkerKind::Regular, any, milliseconds(0));
    REQUIRE(a);
    REQUIRE(starts(*a) == std::vector<Lsn>{1, 2, 3});
    // 1 applied; 2 needs a top-level run, which was deferred (apply_worker.cc marks it so).
    Batch back = *a;
    back.items[1].top_level = true;
    d.release_after(back, 1, Clock::now());
    auto b = d.take(WorkerKind::Regular, any, milliseconds(100));
    REQUIRE(b);
    // Alone, and marked: its atomic run is not repeated, nothing is batched behind it.
    CHECK(starts(*b) == std::vector<Lsn>{2});
    CHECK(b->items[0].top_level);
    d.done(*b, 1);
    auto c = d.take(WorkerKind::Regular, any, milliseconds(100));
    REQUIRE(c);
    CHECK(starts(*c) == std::vector<Lsn>{3});
    CHECK_FALSE(c->items[0].top_level);
}

TEST_CASE("after a lost backend the batch's messages run alone, one suspect at a time", "[dispatcher]")
{
    Dispatcher d({10, 4});
    d.add(msg(1, 1));
    d.add(msg(2, 1));
    d.add(msg(3, 2));
    d.add(msg(4, 2));
    auto a = d.take(WorkerKind::Regular, any, milliseconds(0));
    REQUIRE(a);
    CHECK(starts(*a) == std::vector<Lsn>{1, 2});
    d.lost(*a);
    CHECK(d.suspects() == 2);
    auto s1 = d.take(WorkerKind::Regular, any, milliseconds(0));
    REQUIRE(s1);
    // Lane 2 (no suspects) or the first suspect; take until the suspect shows up.
    std::optional<Batch> other;
    if (!s1->suspect) {
        other = s1;
        s1 = d.take(WorkerKind::Regular, any, milliseconds(0));
        REQUIRE(s1);
    }
    CHECK(s1->suspect);
    CHECK(starts(*s1) == std::vector<Lsn>{1});
    // Another suspect may not run meanwhile, even in another lane.
    auto none = d.take(WorkerKind::Regular, any, milliseconds(0));
    if (none)
        CHECK_FALSE(none->suspect);
    // It was lost again while alone: one loss counted against it.
    d.lost(*s1);
    auto s2 = d.take(WorkerKind::Regular, any, milliseconds(0));
    while (s2 && !s2->suspect)
        s2 = d.take(WorkerKind::Regular, any, milliseconds(0));
    REQUIRE(s2);
    CHECK(starts(*s2) == std::vector<Lsn>{1});
    CHECK(s2->items[0].losses == 1);
    CHECK_FALSE(s2->items[0].verdict);
    d.done(*s2, 1);  // this time it ran
    auto s3 = d.take(WorkerKind::Regular, any, milliseconds(0));
    REQUIRE(s3);
    CHECK(s3->suspect);
    CHECK(starts(*s3) == std::vector<Lsn>{2});
    CHECK(s3->items[0].losses == 0);  // it was only in the first, unattributed loss
    d.done(*s3, 1);
    CHECK(d.suspects() == 0);
}

namespace {

// A server crash while parent 1 waited for its nested atx_exec child 2, which waited for its own
// child 3, and lane 2's message 9 ran too: all four were in flight, all are suspects. Returns the
// dispatcher with the parent's lane the oldest ready one.
void crash_with_nested_chain(Dispatcher& d)
{
    d.add(msg(1, 1));
    d.add(msg(9, 2));
    auto p = d.take(WorkerKind::Regular, any, milliseconds(0));
    auto o = d.take(WorkerKind::Regular, any, milliseconds(0));
    REQUIRE(p);
    REQUIRE(o);
    if (starts(*p) != std::vector<Lsn>{1})
        std::swap(p, o);
    d.add(nested(2, 1));
    auto c = d.take(WorkerKind::Nested, any, milliseconds(0));
    REQUIRE(c);
    d.add(nested(3, 2));
    auto g = d.take(WorkerKind::Nested, any, milliseconds(0));
    REQUIRE(g);
    d.lost(*p);
    d.lost(*o);
    d.lost(*c);
    d.lost(*g);
    REQUIRE(d.suspects() == 4);
}

}  // namespace

TEST_CASE("a suspect's own waited nested messages run with it; another suspect does not", "[dispatcher]")
{
    // Kept from their parent's solo run, the children could only time out its wait.
    Dispatcher d({10, 4});
    crash_with_nested_chain(d);
    auto s = d.take(WorkerKind::Regular, any, milliseconds(0));
    REQUIRE(s);
    CHECK(s->suspect);
    REQUIRE(starts(*s) == std::vector<Lsn>{1});
    // Its child runs with it, and the child's child with the child, neither of them alone.
    auto c = d.take(WorkerKind::Nested, any, milliseconds(0));
    REQUIRE(c);
    CHECK(starts(*c) == std::vector<Lsn>{2});
    CHECK_FALSE(c->suspect);
    auto g = d.take(WorkerKind::Nested, any, milliseconds(0));
    REQUIRE(g);
    CHECK(starts(*g) == std::vector<Lsn>{3});
    CHECK_FALSE(g->suspect);
    // Lane 2's suspect waits, in either pool, while the family runs.
    CHECK_FALSE(d.take(WorkerKind::Regular, any, milliseconds(0)));
    CHECK_FALSE(d.take(WorkerKind::Nested, any, milliseconds(0)));

    SECTION("a crash during the family's run counts against the parent only")
    {
        d.lost(*g);
        d.lost(*c);
        d.lost(*s);
        CHECK(d.suspects() == 4);  // the children stay suspects, lane 2's too
        // Each runs alone now (the regular pool may take a child whose parent does not run).
        std::optional<Batch> again;
        while (auto x = d.take(WorkerKind::Regular, any, milliseconds(0))) {
            CHECK(x->suspect);
            if (starts(*x) == std::vector<Lsn>{1}) {
                again = x;
                break;
            }
            CHECK(x->items[0].losses == 0);  // lane 2's message, the child or the grandchild
            d.done(*x, x->items.size());
        }
        REQUIRE(again);
        CHECK(again->items[0].losses == 1);
        d.done(*again, 1);
    }
    SECTION("a child that outlives its parent's run keeps the next suspect waiting")
    {
        d.done(*s, 1);  // the parent's wait timed out: it ended, its child runs on
        CHECK_FALSE(d.take(WorkerKind::Regular, any, milliseconds(0)));
        d.done(*g, 1);
        CHECK_FALSE(d.take(WorkerKind::Regular, any, milliseconds(0)));
        d.done(*c, 1);
        auto o = d.take(WorkerKind::Regular, any, milliseconds(0));
        REQUIRE(o);
        CHECK(o->suspect);
        CHECK(starts(*o) == std::vector<Lsn>{9});
        d.done(*o, 1);
        CHECK(d.suspects() == 0);
    }
}

TEST_CASE("suspicion survives a new stream (the server crashed)", "[dispatcher]")
{
    Dispatcher d({10, 4});
    d.add(msg(1, 1));
    auto a = d.take(WorkerKind::Regular, any, milliseconds(0));
    REQUIRE(a);
    d.lost(*a);
    d.clear();
    d.add(msg(1, 1));  // sent again by the slot
    auto b = d.take(WorkerKind::Regular, any, milliseconds(0));
    REQUIRE(b);
    CHECK(b->suspect);
}

TEST_CASE("a connection that simply went counts only if the server restarted", "[dispatcher]")
{
    Dispatcher d({10, 4});
    d.add(msg(1, 1));
    auto a = d.take(WorkerKind::Regular, any, milliseconds(0));
    REQUIRE(a);
    // A network drop: reconnected to the same server, nothing is counted.
    d.lost_unexplained(*a, "start-1");
    CHECK(d.suspects() == 0);
    d.settle("start-1");
    auto b = d.take(WorkerKind::Regular, any, milliseconds(0));
    REQUIRE(b);
    CHECK_FALSE(b->suspect);
    // A dead backend: the server restarted; the message, already back in its lane, is a
    // suspect, and so is it when the new stream sends it again.
    d.lost_unexplained(*b, "start-1");
    d.settle("start-2");
    CHECK(d.suspects() == 1);
    auto c = d.take(WorkerKind::Regular, any, milliseconds(0));
    REQUIRE(c);
    CHECK(c->suspect);
    // Lost while it ran alone, then a new stream: one loss against it.
    d.lost_unexplained(*c, "start-2");
    d.clear();
    d.settle("start-3");
    d.add(msg(1, 1));
    auto e = d.take(WorkerKind::Regular, any, milliseconds(0));
    REQUIRE(e);
    CHECK(e->suspect);
    CHECK(e->items[0].losses == 1);
}

TEST_CASE("the nested pool serves a nested atx_exec only while its parent runs, outside the regular budget",
          "[dispatcher]")
{
    Dispatcher d({10, 1});
    d.add(msg(1, 1, 10));             // the parent
    d.add(nested(2, 1, 10));          // its nested, waited message, same role
    CHECK_FALSE(d.nested_waiting());  // the parent does not run yet: nobody waits
    CHECK_FALSE(d.take(WorkerKind::Nested, any, milliseconds(0)));
    auto a = d.take(WorkerKind::Regular, any, milliseconds(0));
    REQUIRE(a);
    CHECK(starts(*a) == std::vector<Lsn>{1});
    CHECK_FALSE(d.take(WorkerKind::Regular, any, milliseconds(0)));  // the principal's budget is spent
    CHECK(d.nested_waiting());
    auto n = d.take(WorkerKind::Nested, any, milliseconds(0));
    REQUIRE(n);
    CHECK(n->nested);
    CHECK(starts(*n) == std::vector<Lsn>{2});
    CHECK_FALSE(d.nested_waiting());
    d.done(*n, 1);
    d.done(*a, 1);
}

TEST_CASE("a message whose parent no longer runs (its caller gave up) waits for a regular session", "[dispatcher]")
{
    Dispatcher d({10, 1});
    d.add(nested(2, 1, 10));  // parent 1 is not in flight
    d.add(msg(5, 5, 10));
    auto a = d.take(WorkerKind::Regular, any, milliseconds(0));
    REQUIRE(a);
    CHECK_FALSE(d.take(WorkerKind::Nested, any, milliseconds(0)));
    d.done(*a, a->items.size());
    auto b = d.take(WorkerKind::Regular, any, milliseconds(0));
    REQUIRE(b);
    CHECK(a->items.size() + b->items.size() == 2);
}

TEST_CASE("a principal occupies at most its share of the nested pool", "[dispatcher]")
{
    Dispatcher::Options o;
    o.batch_size = 10;
    o.role_budget = 4;
    o.nested_budget = 2;
    Dispatcher d(o);
    // Three parents of principal 10 run, each waiting for a nested message; one of principal 20.
    for (Lsn parent = 1; parent <= 3; ++parent)
        d.add(msg(parent, static_cast<uint8_t>(parent), 10));
    d.add(msg(4, 4, 20));
    std::vector<Batch> parents;
    for (int i = 0; i < 4; ++i) {
        auto b = d.take(WorkerKind::Regular, any, milliseconds(0));
        REQUIRE(b);
        parents.push_back(*b);
    }
    for (Lsn parent = 1; parent <= 3; ++parent)
        d.add(nested(10 + parent, parent, 10));
    d.add(nested(20, 4, 20));
    auto n1 = d.take(WorkerKind::Nested, any, milliseconds(0));
    auto n2 = d.take(WorkerKind::Nested, any, milliseconds(0));
    auto n3 = d.take(WorkerKind::Nested, any, milliseconds(0));
    REQUIRE(n1);
    REQUIRE(n2);
    REQUIRE(n3);
    // Principal 10 got two; the third went to principal 20, whose wait is never held up by 10's.
    int tens = (n1->as.principal_oid == 10) + (n2->as.principal_oid == 10) + (n3->as.principal_oid == 10);
    CHECK(tens == 2);
    CHECK_FALSE(d.take(WorkerKind::Nested, any, milliseconds(0)));
    d.done(*n1, 1);
    auto n4 = d.take(WorkerKind::Nested, any, milliseconds(0));
    REQUIRE(n4);
    CHECK(n4->as.principal_oid == 10);
}

TEST_CASE("a batch holds one role and principal; a session is offered its own first", "[dispatcher]")
{
    Dispatcher d({10, 4});
    d.add(msg(1, 1, 10));
    d.add(msg(2, 1, 10));
    d.add(msg(3, 1, 20, 0, false, 10));  // a SECURITY DEFINER function of role 20, called by login 10
    d.add(msg(4, 1, 10));
    auto a = d.take(WorkerKind::Regular, any, milliseconds(0));
    REQUIRE(a);
    CHECK(starts(*a) == std::vector<Lsn>{1, 2});
    CHECK(a->as == RunAs{10, 10});
    d.done(*a, 2);
    auto b = d.take(WorkerKind::Regular, any, milliseconds(0));
    REQUIRE(b);
    CHECK(starts(*b) == std::vector<Lsn>{3});
    CHECK(b->as == RunAs{20, 10});  // charged to login 10, runs as 20
    d.done(*b, 1);
    auto f = d.take(WorkerKind::Regular, any, milliseconds(0));
    REQUIRE(f);
    CHECK(starts(*f) == std::vector<Lsn>{4});
    d.done(*f, 1);

    // Two lanes ready, of two roles: a session that serves role 30 gets role 30's lane first.
    d.add(msg(10, 2, 20));
    d.add(msg(11, 3, 30));
    auto c = d.take(WorkerKind::Regular, RunAs{30, 30}, milliseconds(0));
    REQUIRE(c);
    CHECK(c->as == RunAs{30, 30});
    auto e = d.take(WorkerKind::Regular, RunAs{30, 30}, milliseconds(0));
    REQUIRE(e);
    CHECK(e->as == RunAs{20, 20});  // none of its own left: another's
}

TEST_CASE("the budget is the login's: its group roles share it", "[dispatcher]")
{
    Dispatcher d({10, 2});
    d.add(msg(1, 1, 101, 0, false, 100));  // login 100 after SET ROLE group 101
    d.add(msg(2, 2, 102, 0, false, 100));  // ... group 102
    d.add(msg(3, 3, 100, 0, false, 100));  // ... itself
    d.add(msg(4, 4, 200));                 // someone else
    auto a = d.take(WorkerKind::Regular, any, milliseconds(0));
    auto b = d.take(WorkerKind::Regular, any, milliseconds(0));
    auto c = d.take(WorkerKind::Regular, any, milliseconds(0));
    REQUIRE(a);
    REQUIRE(b);
    REQUIRE(c);
    CHECK(a->as.principal_oid == 100);
    CHECK(b->as.principal_oid == 200);
    CHECK(c->as.principal_oid == 100);
    CHECK_FALSE(d.take(WorkerKind::Regular, any, milliseconds(0)));  // 100's groups share its budget
}

TEST_CASE("a principal with many lanes ahead delays another's by one of its runs, not all", "[dispatcher]")
{
    Dispatcher d({10, 2});
    for (uint8_t lane = 1; lane <= 40; ++lane)
        d.add(msg(lane, lane, 10));  // an offender's forty lanes, queued first
    d.add(msg(100, 100, 20));        // the victim's one message, behind them
    auto a = d.take(WorkerKind::Regular, any, milliseconds(0));
    REQUIRE(a);
    CHECK(a->as.principal_oid == 10);
    auto v = d.take(WorkerKind::Regular, RunAs{10, 10}, milliseconds(0));
    REQUIRE(v);
    CHECK(v->as.principal_oid == 20);  // even for a session that serves the offender
    auto b = d.take(WorkerKind::Regular, RunAs{10, 10}, milliseconds(0));
    REQUIRE(b);
    CHECK(b->as.principal_oid == 10);
    d.done(*v, 1);
    d.add(msg(101, 100, 20));
    d.done(*a, 1);
    // A session freed by the offender goes to the victim's next message first.
    auto v2 = d.take(WorkerKind::Regular, RunAs{10, 10}, milliseconds(0));
    REQUIRE(v2);
    CHECK(starts(*v2) == std::vector<Lsn>{101});
}

TEST_CASE("a condemned message is handed over alone, after the messages before it", "[dispatcher]")
{
    Dispatcher d({10, 2});
    d.add(msg(1, 1));
    d.add(msg(2, 1));
    d.add(msg(3, 1));
    auto a = d.take(WorkerKind::Regular, any, milliseconds(0));
    REQUIRE(a);
    REQUIRE(starts(*a) == std::vector<Lsn>{1, 2, 3});
    d.condemn(*a, id_of(2), atx::Verdict::Timeout);  // 2 overstayed its limit; the batch rolled back
    auto b = d.take(WorkerKind::Regular, any, milliseconds(0));
    REQUIRE(b);
    CHECK(starts(*b) == std::vector<Lsn>{1});
    d.done(*b, 1);
    auto c = d.take(WorkerKind::Regular, any, milliseconds(0));
    REQUIRE(c);
    CHECK(starts(*c) == std::vector<Lsn>{2});
    REQUIRE(c->items[0].verdict);
    CHECK(*c->items[0].verdict == atx::Verdict::Timeout);
    d.done(*c, 1);
    auto e = d.take(WorkerKind::Regular, any, milliseconds(0));
    REQUIRE(e);
    CHECK(starts(*e) == std::vector<Lsn>{3});
    CHECK_FALSE(e->items[0].verdict);
}

TEST_CASE("a condemned message's dead letter does not wait for its principal's budget", "[dispatcher]")
{
    // One login's lanes of statements that overstay; role budget 2. A condemned message is only
    // dead-lettered: it goes also when the login's sessions are all busy, so that its final
    // state does not wait for the next ones to overstay too.
    Dispatcher d({10, 2});
    d.add(msg(3, 3));  // lane 3 is ready first
    d.add(msg(1, 1));
    d.add(msg(2, 2));
    auto x = d.take(WorkerKind::Regular, any, milliseconds(0));
    auto y = d.take(WorkerKind::Regular, any, milliseconds(0));
    REQUIRE(x);
    REQUIRE(y);
    CHECK(starts(*x) == std::vector<Lsn>{3});
    CHECK(starts(*y) == std::vector<Lsn>{1});
    d.add(msg(4, 3));  // lane 3's next, ready before the verdict
    d.done(*x, 1);
    d.condemn(*y, id_of(1), atx::Verdict::Timeout);  // 1 overstayed: the login holds no session now
    // Free sessions: the login's lanes 2 and 3 would fill its budget; the verdict goes anyway.
    bool verdict = false;
    while (auto t = d.take(WorkerKind::Regular, any, milliseconds(0)))
        verdict = verdict || (t->items[0].start == 1 && t->items[0].verdict);
    CHECK(verdict);

    // After a reconnect (clear), the login's two sessions busy, its condemned message sent again.
    Dispatcher e({10, 2});
    e.add(msg(1, 1));
    auto a = e.take(WorkerKind::Regular, any, milliseconds(0));
    REQUIRE(a);
    e.condemn(*a, id_of(1), atx::Verdict::Timeout);
    e.clear();
    e.add(msg(2, 2));
    e.add(msg(3, 3));
    auto b = e.take(WorkerKind::Regular, any, milliseconds(0));
    auto c = e.take(WorkerKind::Regular, any, milliseconds(0));
    REQUIRE(b);
    REQUIRE(c);
    e.add(msg(1, 1));
    auto w = e.take(WorkerKind::Regular, any, milliseconds(0));
    REQUIRE(w);
    CHECK(starts(*w) == std::vector<Lsn>{1});
    REQUIRE(w->items[0].verdict);
    CHECK(*w->items[0].verdict == atx::Verdict::Timeout);
}

TEST_CASE("a backend that exits while a message runs counts against that message only", "[dispatcher]")
{
    Dispatcher d({10, 2});
    d.add(msg(1, 1));
    d.add(msg(2, 1));
    auto a = d.take(WorkerKind::Regular, any, milliseconds(0));
    REQUIRE(a);
    d.lost_running(*a, id_of(2));
    CHECK(d.suspects() == 0);  // the registry named it: nobody else is suspected
    auto b = d.take(WorkerKind::Regular, any, milliseconds(0));
    REQUIRE(b);
    CHECK(starts(*b) == std::vector<Lsn>{1});
    d.done(*b, 1);
    auto c = d.take(WorkerKind::Regular, any, milliseconds(0));
    REQUIRE(c);
    CHECK(starts(*c) == std::vector<Lsn>{2});  // alone: its next loss is clearly its own
    CHECK(c->items[0].losses == 1);
    CHECK_FALSE(c->items[0].verdict);
    d.lost_running(*c, id_of(2));
    auto e = d.take(WorkerKind::Regular, any, milliseconds(0));
    REQUIRE(e);
    REQUIRE(e->items[0].verdict);
    CHECK(*e->items[0].verdict == atx::Verdict::BackendLost);
}

TEST_CASE("a new message wakes a regular worker, not one of the idle nested ones", "[dispatcher]")
{
    // A pool of idle nested workers (left by a burst of nested atx_exec chains) and one regular
    // worker, all waiting. A nested worker cannot take a plain message: a wake-up that reached one
    // was lost, and the message waited for the regular worker's next poll.
    Dispatcher d({10, 2});
    std::atomic<int> nested_got{0};
    std::vector<std::thread> pool;
    for (int i = 0; i < 16; ++i)
        pool.emplace_back([&] {
            if (d.take(WorkerKind::Nested, any, std::chrono::seconds(60)))
                ++nested_got;
        });
    std::optional<Batch> got;
    auto woken_after = std::chrono::seconds(0);
    std::thread regular([&] {
        const auto t0 = Clock::now();
        got = d.take(WorkerKind::Regular, any, std::chrono::seconds(20));
        woken_after = std::chrono::duration_cast<std::chrono::seconds>(Clock::now() - t0);
    });
    // Let them wait (were one not waiting yet, it finds the message on its own: no false failure).
    std::this_thread::sleep_for(milliseconds(300));
    d.add(msg(1, 1));
    regular.join();
    REQUIRE(got);
    CHECK(starts(*got) == std::vector<Lsn>{1});
    CHECK(woken_after < std::chrono::seconds(10));  // woken, not timed out
    d.stop();
    for (auto& t : pool)
        t.join();
    CHECK(nested_got == 0);
}

TEST_CASE("background workers for non-atomic messages are shared out by principal", "[dispatcher]")
{
    Dispatcher d(background_workers(2, 1));
    const Id lane = make_id(0xee, 1);
    CHECK(d.acquire_nonatomic(10, lane));
    CHECK_FALSE(d.acquire_nonatomic(10, lane));  // its share
    CHECK(d.acquire_nonatomic(20, lane));
    CHECK_FALSE(d.acquire_nonatomic(30, lane));  // the database's
    d.release_nonatomic(10);
    CHECK(d.acquire_nonatomic(30, lane));
    CHECK_FALSE(d.acquire_nonatomic(10, lane));
}

TEST_CASE("a freed background worker goes to the principal refused first, not to the one that freed it", "[dispatcher]")
{
    // Two logins whose non-atomic chains ask again the moment they give a worker back held both
    // workers for minutes; a third login's message waited 28 s (issue 21).
    Dispatcher d(background_workers(2, 1));
    const Id la = make_id(0xee, 1), lb = make_id(0xee, 2), lc = make_id(0xee, 3);
    REQUIRE(d.acquire_nonatomic(10, la));
    REQUIRE(d.acquire_nonatomic(20, lb));
    CHECK_FALSE(d.acquire_nonatomic(30, lc));  // full: 30 waits
    d.release_nonatomic(10);
    CHECK_FALSE(d.acquire_nonatomic(10, la));  // the free worker is 30's
    CHECK(d.acquire_nonatomic(30, lc));
    d.release_nonatomic(20);
    CHECK_FALSE(d.acquire_nonatomic(20, lb));  // 10 was refused before it
    CHECK(d.acquire_nonatomic(10, la));
    d.release_nonatomic(30);
    CHECK(d.acquire_nonatomic(20, lb));
    // With no one waiting, a principal takes a free worker at once, again and again.
    d.release_nonatomic(20);
    CHECK(d.acquire_nonatomic(20, lb));
    d.release_nonatomic(20);
    CHECK(d.acquire_nonatomic(20, lb));
}

TEST_CASE("a principal holding no background worker is served before one holding one", "[dispatcher]")
{
    Dispatcher d(background_workers(3, 2));
    const Id l1 = make_id(0xee, 1), l2 = make_id(0xee, 2);
    REQUIRE(d.acquire_nonatomic(10, l1));
    REQUIRE(d.acquire_nonatomic(20, l1));
    REQUIRE(d.acquire_nonatomic(20, l2));
    CHECK_FALSE(d.acquire_nonatomic(10, l2));  // refused first, holding one
    CHECK_FALSE(d.acquire_nonatomic(30, l1));  // refused later, holding none
    d.release_nonatomic(20);
    CHECK_FALSE(d.acquire_nonatomic(10, l2));
    CHECK(d.acquire_nonatomic(30, l1));
}

TEST_CASE("a refused non-atomic message's lane is due again when a worker is freed for it", "[dispatcher]")
{
    Dispatcher d(background_workers(1, 1));
    d.add(msg(1, 1, 10));
    d.add(msg(2, 2, 20));
    auto a = d.take(WorkerKind::Regular, any, milliseconds(0));
    auto b = d.take(WorkerKind::Regular, any, milliseconds(0));
    REQUIRE(a);
    REQUIRE(b);
    if (a->as.principal_oid != 10)
        std::swap(a, b);
    REQUIRE(d.acquire_nonatomic(10, a->lane));
    REQUIRE_FALSE(d.acquire_nonatomic(20, b->lane));
    d.release(*b, Clock::now() + std::chrono::hours(1));  // the deferral's backoff
    CHECK_FALSE(d.take(WorkerKind::Regular, any, milliseconds(0)));
    d.release_nonatomic(10);
    auto again = d.take(WorkerKind::Regular, any, milliseconds(0));
    REQUIRE(again);
    CHECK(starts(*again) == std::vector<Lsn>{2});
    CHECK(d.acquire_nonatomic(20, again->lane));
}

TEST_CASE("take waits for work and wakes when a message arrives; stop() ends the wait", "[dispatcher]")
{
    Dispatcher d({10, 2});
    std::thread t([&] {
        std::this_thread::sleep_for(milliseconds(50));
        d.add(msg(7, 1));
    });
    auto b = d.take(WorkerKind::Regular, any, milliseconds(2000));
    t.join();
    REQUIRE(b);
    CHECK(starts(*b) == std::vector<Lsn>{7});
    std::thread s([&] {
        std::this_thread::sleep_for(milliseconds(50));
        d.stop();
    });
    const auto t0 = Clock::now();
    CHECK_FALSE(d.take(WorkerKind::Regular, any, milliseconds(5000)));
    CHECK(Clock::now() - t0 < milliseconds(2000));
    s.join();
}

TEST_CASE("release gives a batch back for later, handled ones excepted", "[dispatcher]")
{
    Dispatcher d({10, 2});
    d.add(msg(1, 1));
    d.add(msg(2, 1));
    d.add(msg(3, 1));
    auto a = d.take(WorkerKind::Regular, any, milliseconds(0));
    REQUIRE(a);
    d.release_after(*a, 1, Clock::now() + milliseconds(50));
    CHECK(d.queued() == 2);
    CHECK_FALSE(d.take(WorkerKind::Regular, any, milliseconds(0)));
    auto b = d.take(WorkerKind::Regular, any, milliseconds(500));
    REQUIRE(b);
    CHECK(starts(*b) == std::vector<Lsn>{2, 3});
}

namespace {
std::vector<Lsn> starts(const std::vector<Pending>& v)
{
    std::vector<Lsn> out;
    for (const auto& p : v)
        out.push_back(p.start);
    std::sort(out.begin(), out.end());
    return out;
}
const auto kLongAgo = Clock::now() - std::chrono::hours(1);    // nothing is older
auto later() { return Clock::now() + std::chrono::hours(1); }  // everything is older

Dispatcher::Options parking(milliseconds park_after)
{
    Dispatcher::Options o;
    o.batch_size = 10;
    o.role_budget = 2;
    o.park_after = park_after;
    return o;
}
}  // namespace

TEST_CASE("messages behind a long-running batch of their lane are parked, and run from their lane afterwards",
          "[dispatcher][park]")
{
    Dispatcher d({1, 2});
    for (Lsn i = 1; i <= 3; ++i)
        d.add(msg(i, 1));
    auto b = d.take(WorkerKind::Regular, any, milliseconds(0));
    REQUIRE(b);
    CHECK(d.park_candidates(kLongAgo, 100).empty());  // nothing has waited long enough
    auto c = d.park_candidates(later(), 100);
    CHECK(starts(c) == std::vector<Lsn>{1, 2, 3});  // 1 runs that long: parked while it runs
    // While they are parked, their lane is not taken, even once its batch is done.
    d.done(*b, 1);
    CHECK_FALSE(d.take(WorkerKind::Regular, any, milliseconds(0)));
    CHECK(d.park_candidates(later(), 100).empty());  // not handed out twice
    d.parked(starts(c), starts(c));
    CHECK(d.parked_queued() == 2);
    auto b2 = d.take(WorkerKind::Regular, any, milliseconds(0));
    REQUIRE(b2);
    CHECK(starts(*b2) == std::vector<Lsn>{2});
    CHECK(b2->items[0].parked);
    CHECK(d.park_candidates(later(), 100).empty());  // 3 is parked already; nothing else waits
    d.done(*b2, 1);
    CHECK(d.parked_queued() == 1);
}

TEST_CASE("a backlog that moves is not parked; a principal stalled in one lane has its other lanes parked",
          "[dispatcher][park]")
{
    Dispatcher d({1, 2});
    // principal 7: lane 1 runs long, lane 2 waits; principal 8: lane 3 waits, nothing of it runs.
    d.add(msg(1, 1, 7));
    d.add(msg(2, 1, 7));
    auto b = d.take(WorkerKind::Regular, any, milliseconds(0));
    REQUIRE(b);
    d.add(msg(3, 2, 7));
    d.add(msg(4, 3, 8));
    CHECK(starts(d.park_candidates(later(), 100)) == std::vector<Lsn>{1, 2, 3});  // 1 runs
    d.park_failed();
    CHECK(d.parked_queued() == 0);
    // Without a long-running batch nothing is parked, however old the queue.
    Dispatcher fresh({1, 2});
    for (Lsn i = 1; i <= 5; ++i)
        fresh.add(msg(i, static_cast<uint8_t>(i)));
    CHECK(fresh.park_candidates(later(), 100).empty());
}

TEST_CASE("an atx_exec child its running parent waits for is not parked; a lane waiting for a retry is",
          "[dispatcher][park]")
{
    Dispatcher d({1, 4});
    d.add(msg(1, 1, 7));
    auto parent = d.take(WorkerKind::Regular, any, milliseconds(0));
    REQUIRE(parent);
    d.add(nested(2, 1, 7));
    CHECK(starts(d.park_candidates(later(), 100)) == std::vector<Lsn>{1});  // the parent, not its child
    // A lane that failed transiently and waits for its retry time.
    d.add(msg(3, 2, 9));
    d.add(msg(4, 2, 9));
    auto b = d.take(WorkerKind::Regular, std::optional<RunAs>(RunAs{9, 9}), milliseconds(0));
    REQUIRE(b);
    REQUIRE(starts(*b) == std::vector<Lsn>{3});
    d.retry_later(*b, 0, Clock::now() + std::chrono::hours(1), 1);
    CHECK(starts(d.park_candidates(later(), 100)) == std::vector<Lsn>{3, 4});
}

TEST_CASE("a message that runs longer than park_after is parked while it runs", "[dispatcher][park]")
{
    const Dispatcher::Options o = parking(milliseconds(30));
    Dispatcher d(o);
    d.add(msg(1, 1));
    d.add(msg(2, 1));
    auto b = d.take(WorkerKind::Regular, any, milliseconds(0));
    REQUIRE(b);
    REQUIRE(starts(*b) == std::vector<Lsn>{1, 2});
    CHECK(d.park_candidates(Clock::now() - o.park_after, 100).empty());  // not running that long yet
    std::this_thread::sleep_for(milliseconds(40));
    auto c = d.park_candidates(Clock::now() - o.park_after, 100);
    CHECK(starts(c) == std::vector<Lsn>{1, 2});
    CHECK(d.park_candidates(Clock::now() - o.park_after, 100).empty());  // handed out once
    d.parked({1}, starts(c));                                            // atx.park: 1 parked, 2 found handled
    CHECK(d.parked_queued() == 1);
    CHECK(d.park_candidates(Clock::now() - o.park_after, 100).empty());  // neither again
    // The batch stops after 1 (it ran long): 2 goes back to its lane, not parked, not tried again.
    d.done(*b, 1);
    CHECK(d.parked_queued() == 0);
    auto b2 = d.take(WorkerKind::Regular, any, milliseconds(0));
    REQUIRE(b2);
    REQUIRE(starts(*b2) == std::vector<Lsn>{2});
    CHECK_FALSE(b2->items[0].parked);
    CHECK(b2->items[0].park_tried);
    // A message parked while it ran and given back unhandled (its session was lost) stays parked.
    d.add(msg(3, 2));
    auto b3 = d.take(WorkerKind::Regular, any, milliseconds(0));
    REQUIRE(b3);
    REQUIRE(starts(*b3) == std::vector<Lsn>{3});
    std::this_thread::sleep_for(milliseconds(40));
    c = d.park_candidates(Clock::now() - o.park_after, 100);
    REQUIRE(starts(c) == std::vector<Lsn>{3});  // 2 runs as long, but was tried
    d.parked(starts(c), starts(c));
    CHECK(d.parked_queued() == 1);
    d.release(*b3, Clock::now());
    d.done(*b2, 1);
    CHECK(d.parked_queued() == 1);
    auto b4 = d.take(WorkerKind::Regular, any, milliseconds(0));
    REQUIRE(b4);
    REQUIRE(starts(*b4) == std::vector<Lsn>{3});
    CHECK(b4->items[0].parked);
    d.done(*b4, 1);
    CHECK(d.parked_queued() == 0);
}

TEST_CASE("a running message given back while atx.park runs for it is parked when the answer comes",
          "[dispatcher][park]")
{
    // Fuzz seed 2614, round 24: a non-atomic message deferred every second (no background worker
    // share free) went back to its lane between park_candidates and parked(); the answer found
    // it nowhere, the copy was in the server, and every later pass was answered "handled": the
    // slot waited for a run that the share kept from coming.
    const Dispatcher::Options o = parking(milliseconds(30));
    Dispatcher d(o);
    d.add(msg(1, 1));
    d.add(msg(2, 1));
    auto b = d.take(WorkerKind::Regular, any, milliseconds(0));
    REQUIRE(b);
    REQUIRE(starts(*b) == std::vector<Lsn>{1, 2});
    std::this_thread::sleep_for(milliseconds(40));
    auto c = d.park_candidates(Clock::now() - o.park_after, 100);
    REQUIRE(starts(c) == std::vector<Lsn>{1, 2});
    d.release_after(*b, 0, Clock::now());                            // deferred: both back in their lane
    CHECK_FALSE(d.take(WorkerKind::Regular, any, milliseconds(0)));  // the answer is awaited
    d.parked(starts(c), starts(c));
    CHECK(d.parked_queued() == 2);
    CHECK(d.park_candidates(later(), 100).empty());
    // The lane ran long: slow, one message a batch.
    auto b2 = d.take(WorkerKind::Regular, any, milliseconds(0));
    REQUIRE(b2);
    REQUIRE(starts(*b2) == std::vector<Lsn>{1});
    CHECK(b2->items[0].parked);
    d.done(*b2, 1);
    auto b3 = d.take(WorkerKind::Regular, any, milliseconds(0));
    REQUIRE(b3);
    REQUIRE(starts(*b3) == std::vector<Lsn>{2});
    CHECK(b3->items[0].parked);
}

TEST_CASE("a principal whose batches run half of park_after has its backlog parked", "[dispatcher][park]")
{
    const Dispatcher::Options o = parking(milliseconds(40));
    auto backlog = [&](milliseconds ran) {
        Dispatcher d(o);
        d.add(msg(1, 1, 7));
        auto b = d.take(WorkerKind::Regular, any, milliseconds(0));
        REQUIRE(b);
        d.add(msg(2, 2, 7));  // another lane of the same principal, queued meanwhile
        d.add(msg(3, 3, 8));  // another principal's
        std::this_thread::sleep_for(ran);
        d.done(*b, 1);
        // Nothing of principal 7 runs now, and nothing ran park_after: only the last batch's time
        // can say the backlog is slow.
        return starts(d.park_candidates(later(), 100));
    };
    CHECK(backlog(milliseconds(25)) == std::vector<Lsn>{2});
    CHECK(backlog(milliseconds(0)).empty());
}

TEST_CASE("the atx_exec children of a parent that runs from its parked copy are parked", "[dispatcher][park]")
{
    Dispatcher d({1, 4});
    // Principal 7: lane 1 runs long; the parent (lane 2) waits behind it and is parked.
    d.add(msg(1, 1, 7));
    auto stall = d.take(WorkerKind::Regular, any, milliseconds(0));
    REQUIRE(stall);
    d.add(msg(2, 2, 7));
    auto c = d.park_candidates(later(), 100);
    REQUIRE(starts(c) == std::vector<Lsn>{1, 2});  // the stall itself too, while it runs
    d.parked(starts(c), starts(c));
    d.done(*stall, 1);
    auto parent = d.take(WorkerKind::Regular, any, milliseconds(0));
    REQUIRE(parent);
    REQUIRE(starts(*parent) == std::vector<Lsn>{2});
    REQUIRE(parent->items[0].parked);
    // The slot passed the parent: now its child is the oldest message it waits for, and the
    // parent's long run is the stall.
    d.add(nested(3, 2, 7));
    c = d.park_candidates(later(), 100);
    CHECK(starts(c) == std::vector<Lsn>{3});
    d.parked(starts(c), starts(c));
    // It still runs at once, in the nested pool, from its copy.
    auto child = d.take(WorkerKind::Nested, any, milliseconds(0));
    REQUIRE(child);
    CHECK(starts(*child) == std::vector<Lsn>{3});
    CHECK(child->items[0].parked);
    d.done(*child, 1);
    d.done(*parent, 1);
    CHECK(d.parked_queued() == 0);
}

TEST_CASE("a lane whose batch ran longer than park_after gets batches of one, each parked first", "[dispatcher][park]")
{
    Dispatcher::Options o;
    o.batch_size = 10;
    o.role_budget = 2;
    o.park_after = milliseconds(20);
    Dispatcher d(o);
    for (Lsn i = 1; i <= 5; ++i)
        d.add(msg(i, 1));
    auto b = d.take(WorkerKind::Regular, any, milliseconds(0));
    REQUIRE(b);
    CHECK(b->items.size() == 5);
    std::this_thread::sleep_for(milliseconds(30));
    d.done(*b, 1);  // the batch stopped after its first message, which took 30 ms
    // Its next message has waited 30 ms: it is parked before it runs.
    CHECK_FALSE(d.take(WorkerKind::Regular, any, milliseconds(0)));
    auto c = d.park_candidates(Clock::now() - o.park_after, 100);
    CHECK(starts(c) == std::vector<Lsn>{2, 3, 4, 5});
    d.parked(starts(c), starts(c));
    auto b2 = d.take(WorkerKind::Regular, any, milliseconds(0));
    REQUIRE(b2);
    CHECK(starts(*b2) == std::vector<Lsn>{2});  // one at a time while the lane is slow
    d.done(*b2, 1);                             // fast this time: the lane is no longer slow
    auto b3 = d.take(WorkerKind::Regular, any, milliseconds(0));
    REQUIRE(b3);
    CHECK(starts(*b3) == std::vector<Lsn>{3, 4, 5});
    d.done(*b3, 3);
    // When atx.park fails, a slow lane does not wait for it.
    for (Lsn i = 6; i <= 7; ++i)
        d.add(msg(i, 2));
    auto b4 = d.take(WorkerKind::Regular, any, milliseconds(0));
    REQUIRE(b4);
    std::this_thread::sleep_for(milliseconds(30));
    d.done(*b4, 1);
    CHECK_FALSE(d.take(WorkerKind::Regular, any, milliseconds(0)));
    REQUIRE(d.park_candidates(Clock::now() - o.park_after, 100).size() == 1);
    d.park_failed();
    auto b5 = d.take(WorkerKind::Regular, any, milliseconds(0));
    REQUIRE(b5);
    CHECK(starts(*b5) == std::vector<Lsn>{7});
}

TEST_CASE("--batch-delay-ms: a lane with less than a batch waits for more, a full one does not", "[dispatcher]")
{
    Dispatcher::Options o;
    o.batch_size = 3;
    o.role_budget = 2;
    o.batch_delay = milliseconds(300);
    Dispatcher d(o);
    d.add(msg(1, 1));
    d.add(msg(2, 1));
    // Two of three: not before the delay.
    CHECK_FALSE(d.take(WorkerKind::Regular, any, milliseconds(0)));
    d.add(msg(3, 1));
    auto full = d.take(WorkerKind::Regular, any, milliseconds(0));
    REQUIRE(full);
    CHECK(starts(*full) == std::vector<Lsn>{1, 2, 3});
    d.done(*full, 3);
    d.add(msg(4, 1));
    const auto t0 = std::chrono::steady_clock::now();
    auto partial = d.take(WorkerKind::Regular, any, milliseconds(5000));
    REQUIRE(partial);  // the wait ends when the delay does, not at the take's deadline
    CHECK(starts(*partial) == std::vector<Lsn>{4});
    CHECK(std::chrono::steady_clock::now() - t0 >= milliseconds(250));
    CHECK(std::chrono::steady_clock::now() - t0 < milliseconds(4000));
}

TEST_CASE("a copy of a queued or running message is not queued again", "[dispatcher]")
{
    // A parent's retry emits its nested message again under the same id. Queued twice, both
    // copies were marked parked when one was parked, and the slot waited for the other for good.
    Dispatcher d({10, 2});
    Pending first = nested(5, 1);
    Pending copy = first;
    copy.start = 9;
    copy.end = 10;
    REQUIRE(d.add(first));
    CHECK_FALSE(d.add(copy));  // queued
    auto b = d.take(WorkerKind::Regular, any, milliseconds(0));
    REQUIRE(b);
    CHECK(starts(*b) == std::vector<Lsn>{5});
    CHECK_FALSE(d.add(copy));  // running
    Pending elsewhere = copy;  // the same id in another lane is not taken for a copy
    elsewhere.lane = make_id(0xee, 7);
    CHECK(d.add(elsewhere));
    d.done(*b, 1);
    CHECK(d.add(copy));  // handled: a later copy runs (and finds it handled)
    Pending undecodable = msg(20, 3);
    undecodable.id = Id{};
    Pending undecodable2 = msg(21, 3);
    undecodable2.id = Id{};
    CHECK(d.add(undecodable));
    CHECK(d.add(undecodable2));
}

TEST_CASE("a parked child queued behind its parent does not hide the copy the parent's new run writes", "[dispatcher]")
{
    // Loaded parked with its parent, a waited child runs after the parent in the parent's lane
    // (add_parked). The parent's new run writes it again, in the parent's id as lane: that copy
    // must be queued, it is the one that runs while the parent waits. A second copy in that lane
    // is a copy (queued twice, the same id ran in one batch twice).
    Dispatcher d({10, 2});
    const Id caller_lane = make_id(0xee, 1);
    Pending parent = msg(1, 1);
    parent.parked = true;
    Pending parked_child = nested(5, 1);  // lane: the parent's id
    parked_child.lane = caller_lane;      // moved behind the parent
    parked_child.parked = true;
    REQUIRE(d.add(parent));
    REQUIRE(d.add(parked_child));
    auto p = d.take(WorkerKind::Regular, any, milliseconds(0));
    REQUIRE(p);
    REQUIRE(starts(*p) == std::vector<Lsn>{1, 5});  // the parked child after the parent
    Pending copy = nested(5, 1);
    copy.start = 9;
    copy.end = 10;
    Pending again = copy;
    again.start = 12;
    again.end = 13;
    CHECK(d.add(copy));
    CHECK_FALSE(d.add(again));
    // The copy runs in the nested pool while the parent waits.
    auto child = d.take(WorkerKind::Nested, any, milliseconds(0));
    REQUIRE(child);
    CHECK(starts(*child) == std::vector<Lsn>{9});
    CHECK_FALSE(d.add(parked_child));  // live in its own lane while its batch runs
    d.done(*child, 1);
    d.done(*p, 2);  // the parked one ran behind the parent (and found the record)
    CHECK(d.parked_queued() == 0);
    CHECK_FALSE(d.take(WorkerKind::Regular, any, milliseconds(0)));
    CHECK_FALSE(d.take(WorkerKind::Nested, any, milliseconds(0)));
    CHECK(d.add(again));  // nothing of it is live now: a later copy runs (and finds it handled)
}

TEST_CASE("parking one copy of a message leaves its copy in another lane unparked", "[dispatcher][park]")
{
    // The same id queued in two lanes (a waited child moved behind its parked parent, and the
    // copy the parent's new run wrote). atx.park parks positions: when one copy was parked, the
    // other was marked parked too, never counted handled for the slot, and the slot waited for
    // it for good (fuzz seed 2614, runs 11-13, rounds 27-28).
    Dispatcher d({1, 2});
    d.add(msg(1, 1, 7));
    auto b = d.take(WorkerKind::Regular, any, milliseconds(0));  // principal 7 runs long
    REQUIRE(b);
    Pending first = msg(2, 2, 7);
    Pending copy = first;
    copy.start = 3;
    copy.end = 4;
    copy.lane = make_id(0xee, 3);
    REQUIRE(d.add(first));
    REQUIRE(d.add(copy));
    auto c = d.park_candidates(later(), 100);
    REQUIRE(starts(c) == std::vector<Lsn>{1, 2, 3});
    d.parked({1, 2}, {1, 2, 3});  // the server parked 1 and 2; 3 was not parked (said 'running')
    CHECK(d.parked_queued() == 2);
    CHECK(d.where(2).find(" parked") != std::string::npos);
    CHECK(d.where(3).find(" parked") == std::string::npos);
    CHECK(starts(d.park_candidates(later(), 100)) == std::vector<Lsn>{3});  // still to park
    d.parked({3}, {3});
    CHECK(d.parked_queued() == 3);
}

TEST_CASE("the oldest messages are parked first, whichever lane holds them", "[dispatcher][park]")
{
    // One lane of 92,800 children filled every pass of 1000 (lanes were taken in map order), and
    // the message that held the slot was never reached (fuzz seed 2614 round 42).
    Dispatcher d({1, 2});
    d.add(msg(1, 1, 7));
    auto b = d.take(WorkerKind::Regular, any, milliseconds(0));  // principal 7 runs long
    REQUIRE(b);
    for (Lsn i = 100; i < 140; ++i)
        d.add(msg(i, 3, 7));
    d.add(msg(2, 2, 7));
    CHECK(starts(d.park_candidates(later(), 3)) == std::vector<Lsn>{1, 2, 100});
}

TEST_CASE("a condemned message in a slow lane is dead-lettered without being parked first", "[dispatcher][park]")
{
    Dispatcher d(parking(milliseconds(20)));
    d.add(msg(1, 1));
    auto b = d.take(WorkerKind::Regular, any, milliseconds(0));
    REQUIRE(b);
    std::this_thread::sleep_for(milliseconds(40));  // it ran past park_after: its lane is slow
    d.condemn(*b, id_of(1), atx::Verdict::Timeout);
    auto again = d.take(WorkerKind::Regular, any, milliseconds(0));
    REQUIRE(again);
    CHECK(starts(*again) == std::vector<Lsn>{1});
    CHECK(again->items[0].verdict == atx::Verdict::Timeout);
}

// Times given as seconds from now, for the background workers' worker-time accounting.
static std::function<Clock::time_point(double)> clock_from_now()
{
    const auto t0 = Clock::now();
    return [t0](double s) { return t0 + milliseconds(static_cast<int>(s * 1000)); };
}

TEST_CASE("a freed background worker goes to the principal that used the least worker time", "[dispatcher]")
{
    // Issue 21 (fuzz seed 2614, rounds 8 and 24): a victim lane's short non-atomic messages, one
    // after another, against two logins whose chains hold a worker each for their whole limit.
    // Served by round robin alone, the victim had just been served, so a chain that gave its
    // worker back took it again: the victim waited for one more release per message (13.5 s).
    Dispatcher d(background_workers(2, 1));
    const Id la = make_id(0xee, 1), lb = make_id(0xee, 2), lv = make_id(0xee, 3);
    const auto at = clock_from_now();
    REQUIRE(d.acquire_nonatomic(10, la, at(0)));
    REQUIRE(d.acquire_nonatomic(20, lb, at(0)));
    CHECK_FALSE(d.acquire_nonatomic(30, lv, at(0.1)));  // full: the victim waits
    d.release_nonatomic(10, at(5));
    CHECK_FALSE(d.acquire_nonatomic(10, la, at(5)));  // the victim's
    REQUIRE(d.acquire_nonatomic(30, lv, at(5)));
    d.release_nonatomic(30, at(5.2));
    REQUIRE(d.acquire_nonatomic(10, la, at(5.2)));      // no one else waits
    CHECK_FALSE(d.acquire_nonatomic(30, lv, at(5.3)));  // its next message: full again
    d.release_nonatomic(20, at(5.5));
    // 20 was served longer ago than the victim, but has used 5.5 s of worker time to its 0.2 s.
    CHECK_FALSE(d.acquire_nonatomic(20, lb, at(5.5)));
    CHECK(d.acquire_nonatomic(30, lv, at(5.5)));
    d.release_nonatomic(30, at(5.6));
    CHECK(d.acquire_nonatomic(20, lb, at(5.6)));
}

TEST_CASE("a principal refused at its own share waits with the others for the worker it gives back", "[dispatcher]")
{
    // Fuzz seed 2614, round 23: the victim's second non-atomic message was refused while its
    // first ran (its share), did not queue, and the worker the first freed went to a chain: the
    // second waited for that chain's whole run, 21.8 s in all.
    Dispatcher d(background_workers(2, 1));
    const Id la = make_id(0xee, 1), lb = make_id(0xee, 2), lv1 = make_id(0xee, 3), lv2 = make_id(0xee, 4);
    const auto at = clock_from_now();
    REQUIRE(d.acquire_nonatomic(10, la, at(0)));
    REQUIRE(d.acquire_nonatomic(20, lb, at(0)));
    d.release_nonatomic(10, at(5));  // 5 s of worker time
    REQUIRE(d.acquire_nonatomic(30, lv1, at(5)));
    CHECK_FALSE(d.acquire_nonatomic(10, la, at(5.1)));   // full
    CHECK_FALSE(d.acquire_nonatomic(30, lv2, at(5.1)));  // its share
    d.release_nonatomic(30, at(5.2));
    CHECK_FALSE(d.acquire_nonatomic(10, la, at(5.2)));  // 30 waits too, and used 0.2 s to 10's 5 s
    CHECK(d.acquire_nonatomic(30, lv2, at(5.2)));
    d.release_nonatomic(30, at(5.3));
    CHECK(d.acquire_nonatomic(10, la, at(5.3)));
}

TEST_CASE("a worker given back stays with its principal briefly when its lane has more to run", "[dispatcher]")
{
    // Fuzz seed 2614, run nine, round 25: the victim's lane sent non-atomic messages one after
    // another; each time one gave its worker back, a chain's deferred lane asked in the 0.1 s
    // before the victim's next message learned (running atomically) that it needed one, and
    // took it: the victim waited a whole run of the chain per message.
    Dispatcher d(background_workers(1, 1));
    const Id lv = make_id(0xee, 1), lh = make_id(0xee, 2);
    const auto at = clock_from_now();
    REQUIRE(d.acquire_nonatomic(20, lh, at(0)));
    d.release_nonatomic(20, at(5));  // the chain: 5 s of worker time
    REQUIRE(d.acquire_nonatomic(10, lv, at(5)));
    CHECK_FALSE(d.acquire_nonatomic(20, lh, at(5.05)));  // it waits
    d.release_nonatomic(10, at(5.1), lv, true);          // the victim's lane has more
    CHECK_FALSE(d.acquire_nonatomic(20, lh, at(5.15)));  // kept for the victim's next message
    REQUIRE(d.acquire_nonatomic(10, lv, at(5.3)));
    d.release_nonatomic(10, at(5.4), lv, false);  // nothing more in its lane: not kept
    CHECK(d.acquire_nonatomic(20, lh, at(5.45)));
    d.release_nonatomic(20, at(6));

    // Kept for half a second only: the lane's next message did not need a worker after all.
    REQUIRE(d.acquire_nonatomic(10, lv, at(100)));
    CHECK_FALSE(d.acquire_nonatomic(20, lh, at(100.1)));
    d.release_nonatomic(10, at(100.2), lv, true);
    CHECK_FALSE(d.acquire_nonatomic(20, lh, at(100.3)));
    CHECK(d.acquire_nonatomic(20, lh, at(100.8)));
}

TEST_CASE("a worker is not kept for a principal that a waiter comes before", "[dispatcher]")
{
    Dispatcher d(background_workers(1, 1));
    const Id la = make_id(0xee, 1), lb = make_id(0xee, 2);
    const auto at = clock_from_now();
    REQUIRE(d.acquire_nonatomic(10, la, at(0)));
    CHECK_FALSE(d.acquire_nonatomic(20, lb, at(0.1)));  // waits, and has used nothing
    d.release_nonatomic(10, at(5), la, true);           // 10 used 5 s: 20 comes first
    CHECK(d.acquire_nonatomic(20, lb, at(5.05)));
}

TEST_CASE("worker time used long ago no longer puts a principal behind", "[dispatcher]")
{
    Dispatcher d(background_workers(1, 1));
    const Id la = make_id(0xee, 1), lb = make_id(0xee, 2), lc = make_id(0xee, 3);
    const auto at = clock_from_now();
    REQUIRE(d.acquire_nonatomic(10, la, at(0)));
    d.release_nonatomic(10, at(20));  // 20 s of worker time
    REQUIRE(d.acquire_nonatomic(20, lb, at(21)));
    d.release_nonatomic(20, at(22));  // 1 s
    REQUIRE(d.acquire_nonatomic(30, lc, at(1000)));
    CHECK_FALSE(d.acquire_nonatomic(20, lb, at(1000)));  // refused first
    CHECK_FALSE(d.acquire_nonatomic(10, la, at(1001)));
    d.release_nonatomic(30, at(1002));
    // Both uses have decayed to nothing after 16 half-lives: the round robin decides (10 was
    // served longest ago), not a 20 s run of a quarter of an hour ago.
    CHECK_FALSE(d.acquire_nonatomic(20, lb, at(1002)));
    CHECK(d.acquire_nonatomic(10, la, at(1002)));
}

TEST_CASE("a freed background worker goes to the principal served longest ago", "[dispatcher]")
{
    // Round robin: a login whose chain asks again the moment it is refused does not stay ahead of
    // one whose message asks now and then.
    Dispatcher d(background_workers(2, 1));
    const Id lane = make_id(0xee, 1);
    REQUIRE(d.acquire_nonatomic(30, lane));  // 30 was served a moment ago
    d.release_nonatomic(30);
    REQUIRE(d.acquire_nonatomic(10, lane));
    REQUIRE(d.acquire_nonatomic(20, lane));
    CHECK_FALSE(d.acquire_nonatomic(30, lane));  // refused first
    CHECK_FALSE(d.acquire_nonatomic(40, lane));  // refused later, never served
    d.release_nonatomic(10);
    CHECK_FALSE(d.acquire_nonatomic(30, lane));
    CHECK(d.acquire_nonatomic(40, lane));
    d.release_nonatomic(20);
    CHECK(d.acquire_nonatomic(30, lane));
}

TEST_CASE("where() says where a message is, for the slot_held log line", "[dispatcher]")
{
    Dispatcher d({1, 2});
    d.add(msg(1, 1));
    d.add(msg(2, 1));
    CHECK(d.where(2).rfind("queued ", 0) == 0);
    CHECK(d.where(2).find("position=1 of 2") != std::string::npos);
    auto b = d.take(WorkerKind::Regular, any, milliseconds(0));
    REQUIRE(b);
    CHECK(d.where(1).rfind("running ", 0) == 0);
    CHECK(d.where(2).find("lane_leased") != std::string::npos);
    CHECK(d.where(2).find("regular_eligible=no") != std::string::npos);
    CHECK(d.where(7) == "not queued or running");
    d.done(*b, 1);
    CHECK(d.where(2).find("regular_eligible=yes") != std::string::npos);
}
