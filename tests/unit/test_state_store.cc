// StateStore against a real RocksDB, one fresh temporary directory per test.
#include <catch2/catch.hpp>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <stdexcept>
#include <string>

#include <atomic>
#include <chrono>
#include <thread>

#include <fcntl.h>
#include <ftw.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "state_store.h"

using namespace atx::applier;

namespace {

// A fresh directory under $TMPDIR (or /tmp), removed with everything in it at scope exit.
class TempDir {
public:
    TempDir()
    {
        const char* base = std::getenv("TMPDIR");
        std::string tmpl = std::string(base && *base ? base : "/tmp") + "/atx-state-test-XXXXXX";
        if (!mkdtemp(tmpl.data()))
            throw std::runtime_error(std::string("mkdtemp: ") + std::strerror(errno));
        path_ = tmpl;
    }
    ~TempDir()
    {
        chmod(path_.c_str(), 0700);
        nftw(
            path_.c_str(), [](const char* p, const struct stat*, int, struct FTW*) { return std::remove(p); }, 16,
            FTW_DEPTH | FTW_PHYS);
    }
    const std::string& path() const { return path_; }
    std::string db() const { return path_ + "/state"; }

private:
    std::string path_;
};

DeliveryRecord rec(const std::string& id, uint64_t lsn, DeliveryStatus st, const std::string& key = "")
{
    DeliveryRecord r;
    r.message_id = id;
    r.key = key;
    r.source_lsn = lsn;
    r.status = st;
    r.attempts = 1;
    r.updated_at_us = 1700000000000000LL + static_cast<int64_t>(lsn);
    return r;
}

std::vector<std::string> ids(const std::vector<DeliveryRecord>& rs)
{
    std::vector<std::string> out;
    for (const auto& r : rs)
        out.push_back(r.message_id);
    return out;
}

const std::string kScope = "db16384";

}  // namespace

TEST_CASE("record and find a delivery", "[state_store]")
{
    TempDir tmp;
    auto store = StateStore::open(tmp.db());

    DeliveryRecord r = rec("11111111-1111-1111-1111-111111111111", 0x16B3748, DeliveryStatus::Retrying);
    r.attempts = 3;
    r.last_sqlstate = "40P01";
    r.last_error = "deadlock detected\nDETAIL: multi-line";
    store->record(kScope, {r}, true);

    auto got = store->find_message(kScope, r.message_id);
    REQUIRE(got);
    CHECK(got->message_id == r.message_id);
    CHECK(got->key.empty());
    CHECK(got->source_lsn == r.source_lsn);
    CHECK(got->status == DeliveryStatus::Retrying);
    CHECK(got->attempts == 3);
    CHECK(got->last_sqlstate == "40P01");
    CHECK(got->last_error == r.last_error);
    CHECK(got->updated_at_us == r.updated_at_us);

    CHECK_FALSE(store->find_message(kScope, "22222222-2222-2222-2222-222222222222"));
    // Scopes are separate namespaces, also when one is a prefix of the other.
    CHECK_FALSE(store->find_message("db1638", r.message_id));
    CHECK_FALSE(store->find_message("db163840", r.message_id));

    SECTION("overwrite updates the record")
    {
        r.status = DeliveryStatus::Applied;
        r.attempts = 4;
        r.last_sqlstate.clear();
        store->record(kScope, {r}, false);
        auto again = store->find_message(kScope, r.message_id);
        REQUIRE(again);
        CHECK(again->status == DeliveryStatus::Applied);
        CHECK(again->attempts == 4);
        CHECK(store->list(kScope).size() == 1);
    }
}

TEST_CASE("key mapping is written for applied records only", "[state_store]")
{
    TempDir tmp;
    auto store = StateStore::open(tmp.db());
    store->record(kScope,
                  {rec("m1", 100, DeliveryStatus::Applied, "k1"), rec("m2", 200, DeliveryStatus::Duplicate, "k1"),
                   rec("m3", 300, DeliveryStatus::Dead, "k3"), rec("m4", 400, DeliveryStatus::Retrying, "k4"),
                   rec("m5", 500, DeliveryStatus::Applied)},
                  true);
    CHECK(store->find_key(kScope, "k1") == std::optional<std::string>("m1"));
    CHECK_FALSE(store->find_key(kScope, "k3"));
    CHECK_FALSE(store->find_key(kScope, "k4"));
    CHECK_FALSE(store->find_key(kScope, ""));
    CHECK_FALSE(store->find_key("db1", "k1"));
    auto dup = store->find_message(kScope, "m2");
    REQUIRE(dup);
    CHECK(dup->status == DeliveryStatus::Duplicate);
    CHECK(dup->key == "k1");

    SECTION("a retried message that is then applied gets its key")
    {
        store->record(kScope, {rec("m4", 400, DeliveryStatus::Applied, "k4")}, true);
        CHECK(store->find_key(kScope, "k4") == std::optional<std::string>("m4"));
    }
}

TEST_CASE("list returns a scope's records in LSN order, with limit", "[state_store]")
{
    TempDir tmp;
    auto store = StateStore::open(tmp.db());
    // Written out of order; LSNs chosen so that byte order != decimal string order
    // and across the 32-bit boundary.
    store->record(kScope,
                  {rec("c", 0x100000000ULL, DeliveryStatus::Applied), rec("a", 9, DeliveryStatus::Applied),
                   rec("d", 0xFFFFFFFFFFFFFFF0ULL, DeliveryStatus::Dead), rec("b", 10, DeliveryStatus::Retrying)},
                  false);
    store->record("db1", {rec("other", 5, DeliveryStatus::Applied)}, false);

    CHECK(ids(store->list(kScope)) == std::vector<std::string>{"a", "b", "c", "d"});
    CHECK(ids(store->list(kScope, 2)) == std::vector<std::string>{"a", "b"});
    CHECK(store->list(kScope, 0).empty());
    CHECK(ids(store->list("db1")) == std::vector<std::string>{"other"});
    CHECK(store->list("db2").empty());

    SECTION("a message recorded again at another LSN moves in the order and is listed once")
    {
        store->record(kScope, {rec("a", 0x200000000ULL, DeliveryStatus::Applied)}, true);
        CHECK(ids(store->list(kScope)) == std::vector<std::string>{"b", "c", "a", "d"});
        // Twice in one batch: the last wins, one index entry.
        store->record(kScope,
                      {rec("b", 1, DeliveryStatus::Retrying), rec("b", 0x300000000ULL, DeliveryStatus::Applied)}, true);
        CHECK(ids(store->list(kScope)) == std::vector<std::string>{"c", "a", "b", "d"});
        CHECK(store->find_message(kScope, "b")->source_lsn == 0x300000000ULL);
    }
}

TEST_CASE("data survives close and reopen", "[state_store]")
{
    TempDir tmp;
    {
        auto store = StateStore::open(tmp.db());
        store->record(kScope, {rec("m1", 10, DeliveryStatus::Applied, "k1"), rec("m2", 20, DeliveryStatus::Dead)},
                      true);
        store->record(kScope, {rec("m3", 30, DeliveryStatus::Applied)}, false);  // unsynced, clean close
        store->put_meta(kScope, "system_identifier", "7301234567890123456");
        CHECK(store->approximate_size() > 0);
    }
    auto store = StateStore::open(tmp.db());
    CHECK(ids(store->list(kScope)) == std::vector<std::string>{"m1", "m2", "m3"});
    CHECK(store->find_key(kScope, "k1") == std::optional<std::string>("m1"));
    CHECK(store->find_message(kScope, "m2")->status == DeliveryStatus::Dead);
    CHECK(store->get_meta(kScope, "system_identifier") == std::optional<std::string>("7301234567890123456"));
    CHECK_FALSE(store->get_meta(kScope, "missing"));
    CHECK_FALSE(store->get_meta("db1", "system_identifier"));
}

TEST_CASE("meta values overwrite", "[state_store]")
{
    TempDir tmp;
    auto store = StateStore::open(tmp.db());
    store->put_meta(kScope, "n", "1");
    store->put_meta(kScope, "n", std::string("2\0binary", 8));
    CHECK(store->get_meta(kScope, "n") == std::optional<std::string>(std::string("2\0binary", 8)));
}

TEST_CASE("an invalid scope is refused", "[state_store]")
{
    TempDir tmp;
    auto store = StateStore::open(tmp.db());
    CHECK_THROWS_AS(store->record("", {rec("m", 1, DeliveryStatus::Applied)}, false), StateError);
    CHECK_THROWS_AS(store->find_message(std::string("a\0b", 3), "m"), StateError);
    CHECK_THROWS_AS(store->record(kScope, {rec("", 1, DeliveryStatus::Applied)}, false), StateError);
}

TEST_CASE("open fails with StateError where the directory cannot be created", "[state_store]")
{
    TempDir tmp;
    if (geteuid() != 0) {
        REQUIRE(chmod(tmp.path().c_str(), 0500) == 0);
        CHECK_THROWS_AS(StateStore::open(tmp.db()), StateError);
        CHECK_THROWS_AS(StateStore::open(tmp.path()), StateError);
    } else {
        // root ignores the permission bits: use a path whose parent is a regular file instead.
        const std::string file = tmp.path() + "/not-a-dir";
        std::ofstream(file) << "x";
        try {
            StateStore::open(file + "/state");
            FAIL("open succeeded");
        } catch (const StateError& e) {
            CHECK(std::string(e.what()).find("open") != std::string::npos);
        }
    }
}

TEST_CASE("a second open of the same directory fails (RocksDB lock)", "[state_store]")
{
    TempDir tmp;
    auto store = StateStore::open(tmp.db());
    CHECK_THROWS_AS(StateStore::open(tmp.db()), StateError);
}

namespace {

// A small tmpfs at dir (needs root, or root in a user namespace); unmounted (lazily) at scope exit.
class SmallTmpfs {
public:
    explicit SmallTmpfs(const std::string& dir) : dir_(dir)
    {
        mkdir(dir.c_str(), 0700);
        mounted_ = mount("tmpfs", dir.c_str(), "tmpfs", 0, "size=4m") == 0;
    }
    ~SmallTmpfs()
    {
        if (mounted_)
            umount2(dir_.c_str(), MNT_DETACH);
    }
    bool mounted() const { return mounted_; }
    // Writes a filler file until the filesystem is full.
    void fill()
    {
        std::FILE* f = std::fopen((dir_ + "/filler").c_str(), "w");
        REQUIRE(f != nullptr);
        static const std::string block(4096, '\0');
        while (std::fwrite(block.data(), 1, block.size(), f) == block.size()) {
        }
        std::fclose(f);
    }
    void unfill() { std::remove((dir_ + "/filler").c_str()); }

private:
    std::string dir_;
    bool mounted_ = false;
};

constexpr int kNoUserNamespace = 77;

bool write_file(const char* path, const std::string& text)
{
    const int fd = ::open(path, O_WRONLY);
    if (fd < 0)
        return false;
    const bool ok = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
    ::close(fd);
    return ok;
}

// Runs this test binary again, for one test case, in a new user and mount namespace where this
// (unprivileged) user is root and may mount a tmpfs. Returns the child's exit status (Catch2: 0
// when every assertion passed; -w NoTests makes a test case that does not match fail), or
// kNoUserNamespace when the kernel or a container forbids user namespaces.
int rerun_in_user_namespace(const std::string& test_case)
{
    const std::string uid_map = "0 " + std::to_string(getuid()) + " 1";
    const std::string gid_map = "0 " + std::to_string(getgid()) + " 1";
    std::fflush(nullptr);
    const pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {  // only async-signal-safe calls from here: the parent has threads (RocksDB's)
        if (unshare(CLONE_NEWUSER | CLONE_NEWNS) != 0 || !write_file("/proc/self/setgroups", "deny") ||
            !write_file("/proc/self/uid_map", uid_map) || !write_file("/proc/self/gid_map", gid_map))
            _exit(kNoUserNamespace);
        const char* argv[] = {"atx-unit-tests", test_case.c_str(), "-w", "NoTests", nullptr};
        execv("/proc/self/exe", const_cast<char* const*>(argv));
        _exit(127);
    }
    int status = 0;
    if (waitpid(pid, &status, 0) != pid)
        return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// The disk-full tests need a small filesystem of their own. Returns true when this process can
// mount one (root, or already in the user namespace): the caller runs the test body. Otherwise
// the same test case runs in a user namespace and its outcome is asserted here; only where no
// user namespace can be made is the test skipped, with a warning saying so.
bool can_mount_here_or_rerun(const std::string& test_case, const std::string& dir)
{
    {
        SmallTmpfs probe(dir + "/probe");
        if (probe.mounted())
            return true;
    }
    REQUIRE(std::getenv("ATX_TEST_IN_USERNS") == nullptr);  // the namespace must have let us mount
    ::setenv("ATX_TEST_IN_USERNS", "1", 1);
    const int rc = rerun_in_user_namespace(test_case);
    ::unsetenv("ATX_TEST_IN_USERNS");
    if (rc == kNoUserNamespace) {
        WARN("SKIPPED '" << test_case
                         << "': cannot mount a tmpfs (not root) and cannot create a user "
                            "namespace here; run the unit tests as root to cover it");
        return false;
    }
    INFO("the test case re-run in a user namespace (output above) exited with " << rc);
    CHECK(rc == 0);
    return false;
}

// Records until one fails (the disk is full); returns how many succeeded.
int record_until_failure(StateStore& store, const std::string& scope, uint64_t first_lsn)
{
    DeliveryRecord r = rec("", 0, DeliveryStatus::Dead);
    r.last_error.assign(2000, 'e');
    for (int i = 0; i < 100000; ++i) {
        r.message_id = "fill-" + std::to_string(first_lsn + static_cast<uint64_t>(i));
        r.source_lsn = first_lsn + static_cast<uint64_t>(i);
        try {
            store.record(scope, {r}, false);
        } catch (const StateError&) {
            return i;
        }
    }
    FAIL("the filesystem never filled up");
    return -1;
}

const char* const kDiskFullCase = "a full state disk fails writes with StateError and recovers when space is back";
const char* const kDiskFullCloseCase = "closing the store while its disk is full does not abort";

}  // namespace

// The state dir's filesystem fills up (fault_state_dir.sh does the same with the applier): writes
// fail with StateError (no abort inside librocksdb), reads go on, and once space is back the next
// write succeeds without reopening the store by hand. Both cases: the memtable holding entries
// when the WAL write fails, and the memtable empty (Resume() alone would keep the failed WAL writer).
// Not root: the case runs again in a user namespace (can_mount_here_or_rerun).
TEST_CASE(kDiskFullCase, "[state_store]")
{
    {
        TempDir probe_dir;
        if (!can_mount_here_or_rerun(kDiskFullCase, probe_dir.path()))
            return;
    }
    for (const bool empty_memtable : {false, true}) {
        DYNAMIC_SECTION((empty_memtable ? "memtable empty" : "memtable in use"))
        {
            TempDir tmp;
            SmallTmpfs fs(tmp.path() + "/fs");
            REQUIRE(fs.mounted());
            const std::string dir = tmp.path() + "/fs/state";
            {
                auto store = StateStore::open(dir);
                store->record(kScope, {rec("before", 10, DeliveryStatus::Applied, "k-before")}, true);
                if (empty_memtable) {
                    // Reopen: the memtable starts empty, then fill the disk before any write.
                    store.reset();
                    store = StateStore::open(dir);
                    fs.fill();
                    CHECK_THROWS_AS(store->record(kScope, {rec("m1", 20, DeliveryStatus::Applied)}, false), StateError);
                } else {
                    fs.fill();
                    CHECK(record_until_failure(*store, kScope, 1000) >= 0);
                }
                // Still failing while the disk is full, and again; reads work.
                CHECK_THROWS_AS(store->record(kScope, {rec("m2", 21, DeliveryStatus::Applied)}, true), StateError);
                CHECK_THROWS_AS(store->put_meta(kScope, "x", "y"), StateError);
                REQUIRE(store->find_message(kScope, "before"));
                CHECK(store->find_key(kScope, "k-before") == std::optional<std::string>("before"));

                fs.unfill();
                store->record(kScope, {rec("m3", 30, DeliveryStatus::Applied, "k3")}, false);
                store->record(kScope, {rec("m4", 31, DeliveryStatus::Dead)}, true);
                store->put_meta(kScope, "x", "y");
                CHECK(store->find_message(kScope, "before"));
                CHECK(store->find_key(kScope, "k3") == std::optional<std::string>("m3"));
                CHECK(store->get_meta(kScope, "x") == std::optional<std::string>("y"));
            }
            auto again = StateStore::open(dir);
            CHECK(again->find_message(kScope, "m3"));
            CHECK(again->find_message(kScope, "m4"));
            CHECK(again->find_message(kScope, "before"));
        }
    }
}

// Closing the store while the disk is still full (applier stopped during the fault) must not abort.
TEST_CASE(kDiskFullCloseCase, "[state_store]")
{
    TempDir tmp;
    if (!can_mount_here_or_rerun(kDiskFullCloseCase, tmp.path()))
        return;
    SmallTmpfs fs(tmp.path() + "/fs");
    REQUIRE(fs.mounted());
    const std::string dir = tmp.path() + "/fs/state";
    {
        auto store = StateStore::open(dir);
        store->record(kScope, {rec("before", 10, DeliveryStatus::Applied)}, true);
        fs.fill();
        CHECK(record_until_failure(*store, kScope, 1000) >= 0);
    }  // destructor: no SyncWAL on the failed WAL writer
    fs.unfill();
    auto again = StateStore::open(dir);
    CHECK(again->find_message(kScope, "before"));
}

namespace {

constexpr int64_t kDayUs = 86400LL * 1000000;

std::string mid(int i) { return "m" + std::to_string(i); }

// n records of one scope at LSNs first..first+n-1, updated at `at`, every third with a key.
void record_many(StateStore& store, const std::string& scope, int first, int n, int64_t at,
                 DeliveryStatus st = DeliveryStatus::Applied)
{
    std::vector<DeliveryRecord> batch;
    for (int i = first; i < first + n; ++i) {
        DeliveryRecord r = rec(mid(i), static_cast<uint64_t>(i), st, i % 3 == 0 ? "k" + std::to_string(i) : "");
        r.updated_at_us = at;
        batch.push_back(std::move(r));
        if (batch.size() == 500) {
            store.record(scope, batch, false);
            batch.clear();
        }
    }
    store.record(scope, batch, false);
}

}  // namespace

TEST_CASE("record counts follow every write", "[state_store][retention]")
{
    TempDir tmp;
    {
        auto store = StateStore::open(tmp.db());
        CHECK(store->record_count() == 0);
        store->record(kScope, {rec("a", 1, DeliveryStatus::Retrying), rec("b", 2, DeliveryStatus::Applied, "kb")},
                      false);
        store->record(kScope, {rec("a", 3, DeliveryStatus::Applied)}, false);        // moved: still one
        store->record(kScope, {rec("b", 2, DeliveryStatus::Applied, "kb")}, false);  // same again
        store->record(kScope, {rec("c", 4, DeliveryStatus::Dead), rec("c", 5, DeliveryStatus::Dead)}, false);
        store->record("db1", {rec("o", 1, DeliveryStatus::Applied)}, false);
        CHECK(store->record_count(kScope) == 3);
        CHECK(store->record_count("db1") == 1);
        CHECK(store->record_count("db2") == 0);
        CHECK(store->record_count() == 4);
        RetentionPolicy keep_two;
        keep_two.max_age_days = 0;
        keep_two.max_records = 2;
        CHECK(store->sweep(keep_two, 0) == 1);  // the oldest of kScope (b, at 2) goes
        CHECK(store->record_count(kScope) == 2);
        CHECK(store->record_count() == 3);
    }
    auto store = StateStore::open(tmp.db());  // counted again at open
    CHECK(store->record_count(kScope) == 2);
    CHECK(store->record_count("db1") == 1);
    CHECK(store->record_count() == 3);
}

TEST_CASE("retention by count keeps the newest records of each scope and every retrying one",
          "[state_store][retention]")
{
    TempDir tmp;
    auto store = StateStore::open(tmp.db());
    const int64_t now = 1800000000000000LL;
    record_many(*store, kScope, 1, 5, now, DeliveryStatus::Retrying);  // oldest LSNs, kept anyway
    record_many(*store, kScope, 6, 45, now);                           // m6..m50
    record_many(*store, "db1", 1, 10, now);
    REQUIRE(store->record_count(kScope) == 50);

    RetentionPolicy p;
    p.max_age_days = 0;
    p.max_records = 20;
    CHECK(store->sweep(p, now) == 30);
    CHECK(store->record_count(kScope) == 20);
    CHECK(store->swept_count() == 30);
    std::vector<std::string> want;
    for (int i = 1; i <= 5; ++i)
        want.push_back(mid(i));
    for (int i = 36; i <= 50; ++i)
        want.push_back(mid(i));
    CHECK(ids(store->list(kScope)) == want);
    CHECK_FALSE(store->find_message(kScope, mid(35)));
    CHECK_FALSE(store->find_key(kScope, "k33"));                                   // key of a deleted one
    CHECK(store->find_key(kScope, "k36") == std::optional<std::string>(mid(36)));  // of a kept one
    CHECK(store->list("db1").size() == 10);                                        // its own limit, not reached
    CHECK(store->record_count() == 30);

    SECTION("the failover check's range query still sees what is kept")
    {
        CHECK(ids(store->list(kScope, 3, 36, 49)) == std::vector<std::string>{"m36", "m37", "m38"});
        CHECK(ids(store->list(kScope, SIZE_MAX, 30, 38)) == std::vector<std::string>{"m36", "m37"});
        CHECK(store->list(kScope, SIZE_MAX, 6, 36).empty());
    }
    SECTION("a second sweep has nothing to do; new records push the oldest out")
    {
        CHECK(store->sweep(p, now) == 0);
        record_many(*store, kScope, 51, 10, now);
        CHECK(store->sweep(p, now) == 10);
        CHECK(store->find_message(kScope, mid(1)));  // retrying
        CHECK_FALSE(store->find_message(kScope, mid(45)));
        CHECK(store->find_message(kScope, mid(46)));
        CHECK(store->record_count(kScope) == 20);
    }
    SECTION("counts and contents survive a reopen")
    {
        store.reset();
        store = StateStore::open(tmp.db());
        CHECK(store->record_count(kScope) == 20);
        CHECK(ids(store->list(kScope)) == want);
    }
}

TEST_CASE("retention by age deletes records older than the limit, retrying ones excepted", "[state_store][retention]")
{
    TempDir tmp;
    auto store = StateStore::open(tmp.db());
    const int64_t now = 1800000000000000LL;
    record_many(*store, kScope, 1, 10, now - 9 * kDayUs);                             // m1..m10: old
    record_many(*store, kScope, 11, 2, now - 30 * kDayUs, DeliveryStatus::Retrying);  // m11, m12: old, retrying
    record_many(*store, kScope, 13, 5, now - 8 * kDayUs, DeliveryStatus::Dead);       // m13..m17: old
    record_many(*store, kScope, 18, 10, now - 6 * kDayUs);                            // m18..m27: young

    RetentionPolicy p;
    p.max_age_days = 7;
    p.max_records = 0;
    CHECK(store->sweep(p, now) == 15);
    std::vector<std::string> want = {"m11", "m12"};
    for (int i = 18; i <= 27; ++i)
        want.push_back(mid(i));
    CHECK(ids(store->list(kScope)) == want);

    SECTION("both limits: whichever keeps fewer")
    {
        p.max_records = 7;  // 12 held: the 5 oldest non-retrying go although they are young
        CHECK(store->sweep(p, now) == 5);
        CHECK(ids(store->list(kScope)) == std::vector<std::string>{"m11", "m12", "m23", "m24", "m25", "m26", "m27"});
        p.max_records = 100;
        CHECK(store->sweep(p, now + 2 * kDayUs) == 5);  // two days later m23..m27 are 8 days old
        CHECK(ids(store->list(kScope)) == std::vector<std::string>{"m11", "m12"});
    }
    SECTION("a disabled policy deletes nothing")
    {
        p.max_age_days = 0;
        p.max_records = 0;
        CHECK_FALSE(p.enabled());
        CHECK(store->sweep(p, now + 365 * kDayUs) == 0);
        CHECK(store->record_count(kScope) == 12);
    }
}

// The sweep works in chunks and lets record() in between: a writer records while a sweep deletes
// a large backlog; no write waits for the whole sweep, and the counts match the contents after.
TEST_CASE("a sweep does not hold up record()", "[state_store][retention]")
{
    TempDir tmp;
    auto store = StateStore::open(tmp.db());
    const int64_t now = 1800000000000000LL;
    const int backlog = 60000;
    record_many(*store, kScope, 1, backlog, now - 30 * kDayUs);
    RetentionPolicy p;
    p.max_age_days = 7;
    p.max_records = 0;

    std::atomic<bool> sweeping{true};
    size_t deleted = 0;
    const auto t0 = std::chrono::steady_clock::now();
    std::thread sweeper([&] {
        deleted = store->sweep(p, now);
        sweeping = false;
    });
    double sweep_ms = 0, worst_ms = 0;
    int written = 0;
    while (sweeping || written < 10) {
        const auto a = std::chrono::steady_clock::now();
        store->record(kScope, {[&] {
                          DeliveryRecord r =
                              rec("new" + std::to_string(written), 1000000 + written, DeliveryStatus::Applied);
                          r.updated_at_us = now;
                          return r;
                      }()},
                      false);
        worst_ms =
            std::max(worst_ms, std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - a).count());
        ++written;
    }
    sweeper.join();
    sweep_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    INFO("sweep of " << backlog << " took " << sweep_ms << " ms; " << written << " writes meanwhile, the slowest "
                     << worst_ms << " ms");
    CHECK(deleted == static_cast<size_t>(backlog));
    CHECK(written > 10);
    // A write never waited for more than a small part of the sweep (one chunk, not the whole pass).
    CHECK(worst_ms < sweep_ms / 4);
    CHECK(store->record_count(kScope) == static_cast<uint64_t>(written));
    CHECK(store->list(kScope).size() == static_cast<size_t>(written));
}

TEST_CASE("the retention thread sweeps on its own and stops with the store", "[state_store][retention]")
{
    TempDir tmp;
    auto store = StateStore::open(tmp.db());
    record_many(*store, kScope, 1, 3000, 1000000);  // 1970: older than any limit
    RetentionPolicy p;
    p.max_age_days = 1;
    p.max_records = 0;
    store->start_retention(p, std::chrono::milliseconds(50));
    for (int i = 0; i < 200 && store->record_count(kScope) > 0; ++i)
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    CHECK(store->record_count(kScope) == 0);
    CHECK(store->swept_count() == 3000);
    const auto t0 = std::chrono::steady_clock::now();
    store.reset();
    CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(2));
}

TEST_CASE("delivery status names", "[state_store]")
{
    CHECK(std::string(to_string(DeliveryStatus::Applied)) == "applied");
    CHECK(std::string(to_string(DeliveryStatus::Duplicate)) == "duplicate");
    CHECK(std::string(to_string(DeliveryStatus::Retrying)) == "retrying");
    CHECK(std::string(to_string(DeliveryStatus::Dead)) == "dead");
}
