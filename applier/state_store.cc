// The applier's local delivery state in RocksDB. See state_store.h for what is authoritative where
// and docs/applier-state.md for the layout and the retention rule.
//
// Shape follows apache/kvrocks src/storage/storage.cc:
//  - one fixed, ordered list of column families, addressed by an enum class id;
//  - every write goes through Impl::write(), the one place where the sync option is decided;
//  - a clean shutdown: SyncWAL, CancelAllBackgroundWork, destroy the handles, Close.
//
// Failures (docs/applier-state.md, "RocksDB's log, and a full state disk"):
//  - RocksDB's info log goes to the applier's log (SpdlogInfoLog), never to a LOG file in the state
//    directory: on a full disk RocksDB would otherwise write to that LOG while handling the write
//    error, through a writer that has already failed, and Debian's librocksdb (assertions on)
//    aborts the process there.
//  - A failed write leaves the DB in RocksDB's background-error (read-only) state, and its WAL
//    writer may be the failed one. Automatic recovery is switched off (NoAutoRecovery); the next
//    write first calls DB::Resume() (fails cheaply while the disk is still full, the DB stays open
//    for reads) and, once that succeeds, closes and reopens the DB, so that no write ever goes
//    through the failed WAL writer again (Resume() alone keeps it when the memtable was empty,
//    and the next write or SyncWAL then aborts in the same assertion). Reads take a shared lock,
//    the reopen an exclusive one.
//
// Retention (docs/applier-state.md, "Retention"): sweep() walks a scope's by_lsn index from the
// oldest LSN and deletes records the policy no longer keeps, in chunks under the write lock, so
// the hot path (record()) waits for one chunk at most. The number of records per scope is counted
// once at open (a walk over by_lsn, keys only) and then kept by every write, so that the count
// limit needs no walk.
//
// Keys (all column families): scope + '\0' + rest. A scope never contains '\0', so the prefix
// scope + '\0' selects exactly one scope ("db1" does not match "db10").
//   deliveries  scope \0 message_id            -> DeliveryRecord (encode_record)
//   keys        scope \0 idempotency key       -> message_id
//   by_lsn      scope \0 be64(lsn) message_id  -> ""
//   meta        scope \0 name                  -> value
#include "state_store.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <condition_variable>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>
#include <shared_mutex>
#include <thread>
#include <unordered_map>

#include <sys/stat.h>

#include <rocksdb/filter_policy.h>
#include <rocksdb/table.h>
#include <rocksdb/convenience.h>
#include <rocksdb/db.h>
#include <rocksdb/env.h>
#include <rocksdb/listener.h>
#include <rocksdb/options.h>
#include <rocksdb/slice_transform.h>
#include <rocksdb/write_batch.h>
#include <spdlog/spdlog.h>

#include "bytes.h"
#include "logging.h"

namespace atx::applier {

const char* to_string(DeliveryStatus s)
{
    switch (s) {
    case DeliveryStatus::Applied: return "applied";
    case DeliveryStatus::Duplicate: return "duplicate";
    case DeliveryStatus::Retrying: return "retrying";
    case DeliveryStatus::Dead: return "dead";
    }
    return "unknown";
}

namespace {

// The column families, in their fixed order. The order is the index into Impl::handles; never
// reorder or reuse a slot, only append.
enum class ColumnFamilyID : size_t { Default = 0, Deliveries, Keys, ByLsn, Meta, Count };

constexpr std::array<const char*, static_cast<size_t>(ColumnFamilyID::Count)> kColumnFamilyNames = {
    "default",  // rocksdb::kDefaultColumnFamilyName; RocksDB requires it, we keep it empty
    "deliveries", "keys", "by_lsn", "meta"};

constexpr uint8_t kRecordVersion = 1;

[[noreturn]] void fail(const char* op, const rocksdb::Status& st)
{
    throw StateError(std::string("state store: ") + op + " failed: " + st.ToString());
}

void check(const char* op, const rocksdb::Status& st)
{
    if (!st.ok())
        fail(op, st);
}

std::string scope_prefix(const std::string& scope)
{
    if (scope.empty() || scope.find('\0') != std::string::npos)
        throw StateError("state store: invalid scope (empty or contains NUL)");
    std::string p = scope;
    p.push_back('\0');
    return p;
}

std::string be64(uint64_t v)
{
    ByteWriter w;
    w.u64(v);
    return w.take();
}

std::string lsn_key(const std::string& prefix, uint64_t lsn, const std::string& message_id)
{
    return prefix + be64(lsn) + message_id;
}

int64_t unix_now_us()
{
    return std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::system_clock::now().time_since_epoch())
        .count();
}

constexpr size_t kSweepChunk = 1000;  // by_lsn entries looked at per write-lock hold

bool starts_with(const rocksdb::Slice& s, const std::string& prefix)
{
    return s.size() >= prefix.size() && std::memcmp(s.data(), prefix.data(), prefix.size()) == 0;
}

// Value of the deliveries column family. Version byte first; a reader refuses other versions.
//   u8 version (1), str16 message_id, str16 key, u64 source_lsn, u8 status, u32 attempts,
//   str16 last_sqlstate, str32 last_error, i64 updated_at_us
std::string encode_record(const DeliveryRecord& r)
{
    ByteWriter w;
    w.u8(kRecordVersion);
    w.str16(r.message_id);
    w.str16(r.key);
    w.u64(r.source_lsn);
    w.u8(static_cast<uint8_t>(r.status));
    w.u32(r.attempts);
    w.str16(r.last_sqlstate);
    w.str32(r.last_error);
    w.i64(r.updated_at_us);
    return w.take();
}

DeliveryRecord decode_record(std::string_view v, std::string_view what)
{
    try {
        ByteReader rd(v);
        uint8_t version = rd.u8();
        if (version != kRecordVersion)
            throw DecodeError("unknown record version " + std::to_string(version));
        DeliveryRecord r;
        r.message_id = std::string(rd.str16());
        r.key = std::string(rd.str16());
        r.source_lsn = rd.u64();
        uint8_t st = rd.u8();
        if (st < static_cast<uint8_t>(DeliveryStatus::Applied) || st > static_cast<uint8_t>(DeliveryStatus::Dead))
            throw DecodeError("unknown delivery status " + std::to_string(st));
        r.status = static_cast<DeliveryStatus>(st);
        r.attempts = rd.u32();
        r.last_sqlstate = std::string(rd.str16());
        r.last_error = std::string(rd.str32());
        r.updated_at_us = rd.i64();
        if (!rd.at_end())
            throw DecodeError("trailing bytes");
        return r;
    } catch (const DecodeError& e) {
        throw StateError("state store: corrupt delivery record " + std::string(what) + ": " + e.what());
    }
}

// RocksDB's info log, forwarded to the applier's log: DEBUG -> trace, INFO/HEADER -> debug,
// WARN -> warn, ERROR/FATAL -> error. Called from RocksDB's own threads too (spdlog is thread-safe).
class SpdlogInfoLog : public rocksdb::Logger {
public:
    SpdlogInfoLog() : rocksdb::Logger(rocksdb::InfoLogLevel::INFO_LEVEL) {}

    using rocksdb::Logger::Logv;
    void Logv(const char* format, va_list ap) override { Logv(rocksdb::InfoLogLevel::INFO_LEVEL, format, ap); }
    void Logv(const rocksdb::InfoLogLevel level, const char* format, va_list ap) override
    {
        spdlog::level::level_enum to = spdlog::level::debug;
        const char* name = "info";
        switch (level) {
        case rocksdb::InfoLogLevel::DEBUG_LEVEL:
            to = spdlog::level::trace;
            name = "debug";
            break;
        case rocksdb::InfoLogLevel::INFO_LEVEL:
            to = spdlog::level::debug;
            name = "info";
            break;
        case rocksdb::InfoLogLevel::WARN_LEVEL:
            to = spdlog::level::warn;
            name = "warn";
            break;
        case rocksdb::InfoLogLevel::ERROR_LEVEL:
            to = spdlog::level::err;
            name = "error";
            break;
        case rocksdb::InfoLogLevel::FATAL_LEVEL:
            to = spdlog::level::err;
            name = "fatal";
            break;
        default:
            to = spdlog::level::debug;
            name = "header";
            break;
        }
        spdlog::logger* lg = spdlog::default_logger_raw();
        if (!lg || !lg->should_log(to))
            return;
        char small[512];
        va_list copy;
        va_copy(copy, ap);
        const int n = std::vsnprintf(small, sizeof small, format, copy);
        va_end(copy);
        if (n < 0)
            return;
        std::string msg;
        if (static_cast<size_t>(n) < sizeof small) {
            msg.assign(small, static_cast<size_t>(n));
        } else {
            msg.resize(static_cast<size_t>(n) + 1);
            std::vsnprintf(msg.data(), msg.size(), format, ap);
            msg.resize(static_cast<size_t>(n));
        }
        while (!msg.empty() && (msg.back() == '\n' || msg.back() == '\r'))
            msg.pop_back();
        lg->log(to, "event=rocksdb_log rocksdb_level={} msg={}", name, logq(msg));
    }
};

// Turns off RocksDB's own recovery from a background error (for ENOSPC it polls the free space
// and needs a free "disk buffer" of write_buffer_size, which a small filesystem may never have;
// while it runs, DB::Resume() returns Busy). Impl::recover() resumes instead.
class NoAutoRecovery : public rocksdb::EventListener {
public:
    void OnErrorRecoveryBegin(rocksdb::BackgroundErrorReason, rocksdb::Status bg_error, bool* auto_recovery) override
    {
        bg_error.PermitUncheckedError();
        if (auto_recovery)
            *auto_recovery = false;
    }
};

}  // namespace

struct StateStore::Impl {
    // How a write must reach the disk. Decided here, in one place, for every write.
    enum class Durability { Buffered, Synced };

    std::string dir;
    rocksdb::DB* db = nullptr;                          // null only after a reopen failed (until the next one succeeds)
    std::vector<rocksdb::ColumnFamilyHandle*> handles;  // ours first, in ColumnFamilyID order,
                                                        // then any unknown ones found on disk
    // Lock order: write_mutex, then rw. Writers (record/put_meta/sweep) hold write_mutex for
    // their whole read-then-write; rw is shared for every use of db/handles and exclusive only
    // while recover() swaps them.
    std::mutex write_mutex;
    mutable std::shared_mutex rw;
    // A write failed and the DB has not been reopened since: the next write recovers first, and
    // close() does not touch the WAL (its writer may be the failed one).
    std::atomic<bool> failed{false};
    bool read_only = false;  // opened read-only after a failed reopen (only while failed)
    std::string last_error;  // of the failed write, for the StateError while still failing

    // by_lsn entries (= records) per scope prefix; guarded by write_mutex. total mirrors the sum
    // for readers that take no lock (metrics).
    std::map<std::string, uint64_t> counts;
    std::atomic<uint64_t> total{0};
    std::atomic<uint64_t> swept{0};

    // The retention thread (start_retention).
    std::thread sweeper;
    std::mutex sweeper_mu;
    std::condition_variable sweeper_cv;
    std::atomic<bool> stopping{false};

    rocksdb::ColumnFamilyHandle* cf(ColumnFamilyID id) const { return handles[static_cast<size_t>(id)]; }

    // Call with rw held (either way).
    void require_open(const char* op) const
    {
        if (!db)
            throw StateError(std::string("state store: ") + op +
                             " failed: the store is closed after a failed "
                             "write (" +
                             last_error + "); it is reopened on the next write");
    }

    static rocksdb::Options make_options()
    {
        rocksdb::Options options;
        options.create_if_missing = true;
        options.create_missing_column_families = true;
        options.max_open_files = 256;
        options.write_buffer_size = 16 << 20;
        options.max_write_buffer_number = 2;
        options.keep_log_file_num = 4;
        options.max_manifest_file_size = 64 << 20;
        options.info_log = std::make_shared<SpdlogInfoLog>();
        options.listeners.push_back(std::make_shared<NoAutoRecovery>());
        return options;
    }

    // Opens dir into db/handles (both empty before). Returns RocksDB's status.
    rocksdb::Status open_db(bool read_only = false)
    {
        const rocksdb::Options options = make_options();
        rocksdb::ColumnFamilyOptions cf_options(options);
        // Most lookups are for message ids and keys that are not there (every new message is
        // checked): a bloom filter answers those without reading data blocks.
        rocksdb::BlockBasedTableOptions table;
        table.filter_policy.reset(rocksdb::NewBloomFilterPolicy(10));
        cf_options.table_factory.reset(rocksdb::NewBlockBasedTableFactory(table));
        // The same in the memtable, where a drain's lookups land first: without it each missed
        // one walked the skip list (a seventh of the applier's CPU per message in a drain).
        cf_options.memtable_prefix_bloom_size_ratio = 0.02;
        cf_options.memtable_whole_key_filtering = true;
        // Records arrive nearly in key order (time-ordered ids, stream-ordered LSNs) but lanes
        // interleave them: without a hint every out-of-place insert searched the skip list from
        // its top level (a sixth of the applier's CPU in a drain). One hint per memtable (an empty
        // prefix): the search starts from the last insert and climbs only as far as it must.
        // RocksDB ignores it when it inserts a group of writes in parallel, which is still correct.
        cf_options.memtable_insert_with_hint_prefix_extractor.reset(rocksdb::NewFixedPrefixTransform(0));

        std::vector<rocksdb::ColumnFamilyDescriptor> descriptors;
        for (const char* name : kColumnFamilyNames)
            descriptors.emplace_back(name, cf_options);
        // A store written by a newer applier may hold column families this build does not know;
        // RocksDB refuses to open unless all are named, so open them too and leave them alone.
        // Create the directory (its last component, as create_if_missing would) before RocksDB
        // looks at it: on a missing directory RocksDB logs a harmless "Error when reading ... dir"
        // at error level, which now lands in the applier's log. Failures show up in DB::Open.
        (void)::mkdir(dir.c_str(), 0700);
        std::vector<std::string> existing;
        if (rocksdb::DB::ListColumnFamilies(rocksdb::DBOptions(options), dir, &existing).ok()) {
            for (const auto& name : existing) {
                bool known = false;
                for (const char* k : kColumnFamilyNames)
                    known = known || name == k;
                if (!known)
                    descriptors.emplace_back(name, cf_options);
            }
        }
        handles.clear();
        rocksdb::Status st =
            read_only ? rocksdb::DB::OpenForReadOnly(rocksdb::DBOptions(options), dir, descriptors, &handles, &db)
                      : rocksdb::DB::Open(rocksdb::DBOptions(options), dir, descriptors, &handles, &db);
        if (!st.ok()) {
            db = nullptr;
            handles.clear();
        }
        return st;
    }

    // Call with write_mutex held, before a write. After a failed write: DB::Resume() as a cheap
    // probe (while the disk is still full it usually fails and the DB stays open, read-only), then
    // close and reopen so that the WAL writer is a new one. If that reopen fails (the disk is still
    // full: Resume() succeeds when it has nothing to flush), the store is opened read-only so that
    // reads go on, and the next write tries the read-write open again. Throws StateError while the
    // store cannot be written.
    void recover()
    {
        if (!failed)
            return;
        if (db && !read_only) {
            rocksdb::Status st;
            {
                std::shared_lock<std::shared_mutex> lock(rw);
                st = db->Resume();
            }
            if (!st.ok())
                throw StateError("state store: still failing (" + last_error + "); resume: " + st.ToString());
        }
        std::unique_lock<std::shared_mutex> lock(rw);
        close_db(/*sync_wal=*/false);
        read_only = false;
        rocksdb::Status st = open_db();
        if (!st.ok()) {
            const std::string msg =
                "state store: still failing (" + last_error + "); reopen " + dir + ": " + st.ToString();
            if (open_db(/*read_only=*/true).ok())
                read_only = true;
            else
                last_error = st.ToString();  // closed: readers quote this
            throw StateError(msg);
        }
        failed = false;
        last_error.clear();
        spdlog::info("event=state_store_reopened dir={} action=\"writing again after a failed write\"", logq(dir));
    }

    // Call with write_mutex held.
    void write(rocksdb::WriteBatch& batch, Durability d, const char* op)
    {
        if (batch.Count() == 0)
            return;
        recover();
        rocksdb::WriteOptions wo;
        wo.sync = (d == Durability::Synced);
        rocksdb::Status st;
        {
            std::shared_lock<std::shared_mutex> lock(rw);
            require_open(op);
            st = db->Write(wo, &batch);
        }
        if (!st.ok()) {
            {
                std::unique_lock<std::shared_mutex> lock(rw);  // readers quote last_error
                last_error = st.ToString();
            }
            failed = true;
            fail(op, st);
        }
    }

    // Returns false if not found; throws on any other failure. Call with rw held (either way).
    bool get(ColumnFamilyID id, const std::string& key, std::string* value, const char* op) const
    {
        require_open(op);
        rocksdb::Status st = db->Get(rocksdb::ReadOptions(), cf(id), key, value);
        if (st.IsNotFound())
            return false;
        check(op, st);
        return true;
    }

    std::optional<DeliveryRecord> get_record(const std::string& prefix, const std::string& message_id,
                                             const char* op) const
    {
        std::string v;
        if (!get(ColumnFamilyID::Deliveries, prefix + message_id, &v, op))
            return std::nullopt;
        return decode_record(v, message_id);
    }

    // Counts by_lsn entries per scope. At open, before any other thread can write.
    void count_records()
    {
        counts.clear();
        uint64_t n = 0;
        rocksdb::ReadOptions ro;
        ro.fill_cache = false;
        std::unique_ptr<rocksdb::Iterator> it(db->NewIterator(ro, cf(ColumnFamilyID::ByLsn)));
        std::string prefix;
        uint64_t* slot = nullptr;
        for (it->SeekToFirst(); it->Valid(); it->Next()) {
            const rocksdb::Slice k = it->key();
            if (!slot || !starts_with(k, prefix)) {
                const void* nul = std::memchr(k.data(), '\0', k.size());
                if (!nul)
                    continue;  // not written by record()
                prefix.assign(k.data(), static_cast<size_t>(static_cast<const char*>(nul) - k.data()) + 1);
                slot = &counts[prefix];
            }
            ++*slot;
            ++n;
        }
        check("open (count records)", it->status());
        total = n;
    }

    // Call with write_mutex held, after a write that changed a scope's by_lsn entries.
    void adjust_count(const std::string& prefix, int64_t delta)
    {
        uint64_t& c = counts[prefix];
        const uint64_t before = c;
        c = delta < 0 ? c - std::min<uint64_t>(c, static_cast<uint64_t>(-delta)) : c + static_cast<uint64_t>(delta);
        total += c - before;  // unsigned wrap-around adds a negative difference correctly
    }

    // One scope's sweep; see StateStore::sweep.
    size_t sweep_scope(const std::string& prefix, const RetentionPolicy& policy, int64_t now_us)
    {
        const int64_t cutoff =
            policy.max_age_days != 0 ? now_us - static_cast<int64_t>(policy.max_age_days) * 86400 * 1000000 : INT64_MIN;
        std::string resume = prefix;  // the next chunk looks at by_lsn keys >= resume
        size_t deleted = 0;
        for (bool done = false; !done && !stopping;) {
            std::unique_lock<std::mutex> lock(write_mutex);
            recover();
            const uint64_t count = counts[prefix];
            uint64_t excess = policy.max_records != 0 && count > policy.max_records ? count - policy.max_records : 0;
            rocksdb::WriteBatch batch;
            int64_t index_removed = 0;
            size_t records_removed = 0;
            {
                std::shared_lock<std::shared_mutex> read_lock(rw);
                require_open("sweep");
                std::unique_ptr<rocksdb::Iterator> it(
                    db->NewIterator(rocksdb::ReadOptions(), cf(ColumnFamilyID::ByLsn)));
                size_t visited = 0;
                for (it->Seek(resume);; it->Next()) {
                    if (!it->Valid() || !starts_with(it->key(), prefix)) {
                        done = true;
                        break;
                    }
                    if (visited++ == kSweepChunk)
                        break;
                    const rocksdb::Slice k = it->key();
                    resume.assign(k.data(), k.size());
                    resume.push_back('\0');  // the smallest key after this one
                    if (k.size() < prefix.size() + 8)
                        continue;
                    ByteReader lsn_reader(std::string_view(k.data() + prefix.size(), 8));
                    const uint64_t lsn = lsn_reader.u64();
                    const std::string message_id(k.data() + prefix.size() + 8, k.size() - prefix.size() - 8);
                    auto rec = get_record(prefix, message_id, "sweep (read)");
                    if (!rec || rec->source_lsn != lsn) {  // stale index entry
                        check("sweep (batch)", batch.Delete(cf(ColumnFamilyID::ByLsn), k));
                        ++index_removed;
                        continue;
                    }
                    if (rec->status == DeliveryStatus::Retrying)
                        continue;  // always kept: it carries the retry budget
                    if (excess == 0 && rec->updated_at_us >= cutoff) {
                        done = true;  // LSN order is (nearly) time order: the rest is newer
                        break;
                    }
                    check("sweep (batch)", batch.Delete(cf(ColumnFamilyID::Deliveries), prefix + message_id));
                    check("sweep (batch)", batch.Delete(cf(ColumnFamilyID::ByLsn), k));
                    if (!rec->key.empty()) {
                        std::string owner;
                        if (get(ColumnFamilyID::Keys, prefix + rec->key, &owner, "sweep (read key)") &&
                            owner == message_id)
                            check("sweep (batch)", batch.Delete(cf(ColumnFamilyID::Keys), prefix + rec->key));
                    }
                    ++index_removed;
                    ++records_removed;
                    if (excess > 0)
                        --excess;
                }
                check("sweep (iterate)", it->status());
            }
            // Unsynced: a deletion lost in a crash is simply made again by the next sweep.
            write(batch, Durability::Buffered, "sweep");
            adjust_count(prefix, -index_removed);
            swept += records_removed;
            deleted += records_removed;
            lock.unlock();
            if (!done)  // let a waiting record() take the lock between two chunks
                std::this_thread::sleep_for(std::chrono::milliseconds(1));
        }
        return deleted;
    }

    // Call with rw held exclusively (or from the destructor).
    void close_db(bool sync_wal) noexcept
    {
        if (!db)
            return;
        // Errors cannot be reported from a destructor; the WAL is replayed on the next open anyway.
        // Not after a failed write: SyncWAL on a failed WAL writer aborts in librocksdb's assertion
        // (Debian's build has them on); what did reach the WAL file is replayed on the next open.
        if (sync_wal)
            (void)db->SyncWAL();
        rocksdb::CancelAllBackgroundWork(db, true);
        for (auto* h : handles)
            (void)db->DestroyColumnFamilyHandle(h);
        handles.clear();
        (void)db->Close();
        delete db;
        db = nullptr;
    }

    void close() noexcept { close_db(!failed && !read_only); }

    ~Impl() { close(); }
};

std::unique_ptr<StateStore> StateStore::open(const std::string& dir)
{
    auto impl = std::make_unique<Impl>();
    impl->dir = dir;
    rocksdb::Status st = impl->open_db();
    if (!st.ok())
        throw StateError("state store: open " + dir + " failed: " + st.ToString());
    impl->count_records();
    return std::unique_ptr<StateStore>(new StateStore(std::move(impl)));
}

StateStore::StateStore(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

StateStore::~StateStore()
{
    {
        std::lock_guard<std::mutex> lock(impl_->sweeper_mu);
        impl_->stopping = true;
    }
    impl_->sweeper_cv.notify_all();
    if (impl_->sweeper.joinable())
        impl_->sweeper.join();
}

void StateStore::record(const std::string& scope, const std::vector<DeliveryRecord>& records, bool sync)
{
    const std::string prefix = scope_prefix(scope);
    std::lock_guard<std::mutex> lock(impl_->write_mutex);
    impl_->recover();  // before the reads below: they must see the reopened DB
    rocksdb::WriteBatch batch;
    int64_t added = 0;  // by_lsn entries this batch adds (messages not recorded before)
    {
        std::shared_lock<std::shared_mutex> read_lock(impl_->rw);
        // LSN of each message as this batch leaves it, so a message recorded twice in one batch at
        // different LSNs leaves exactly one by_lsn entry.
        std::unordered_map<std::string, uint64_t> lsn_in_batch;

        for (const auto& r : records) {
            if (r.message_id.empty())
                throw StateError("state store: record without message id");
            const std::string dkey = prefix + r.message_id;

            std::optional<uint64_t> old_lsn;
            if (auto it = lsn_in_batch.find(r.message_id); it != lsn_in_batch.end()) {
                old_lsn = it->second;
            } else if (auto old = impl_->get_record(prefix, r.message_id, "record (read previous)")) {
                old_lsn = old->source_lsn;
            }
            if (old_lsn && *old_lsn != r.source_lsn)
                check("record (batch)",
                      batch.Delete(impl_->cf(ColumnFamilyID::ByLsn), lsn_key(prefix, *old_lsn, r.message_id)));
            if (!old_lsn)
                ++added;

            std::string value;
            try {
                value = encode_record(r);
            } catch (const std::length_error& e) {
                throw StateError("state store: record " + r.message_id + ": " + e.what());
            }
            check("record (batch)", batch.Put(impl_->cf(ColumnFamilyID::Deliveries), dkey, value));
            if (r.status == DeliveryStatus::Applied && !r.key.empty())
                check("record (batch)", batch.Put(impl_->cf(ColumnFamilyID::Keys), prefix + r.key, r.message_id));
            check("record (batch)", batch.Put(impl_->cf(ColumnFamilyID::ByLsn),
                                              lsn_key(prefix, r.source_lsn, r.message_id), rocksdb::Slice()));
            lsn_in_batch[r.message_id] = r.source_lsn;
        }
    }
    impl_->write(batch, sync ? Impl::Durability::Synced : Impl::Durability::Buffered, "record");
    impl_->adjust_count(prefix, added);
}

std::optional<DeliveryRecord> StateStore::find_message(const std::string& scope, const std::string& message_id) const
{
    const std::string prefix = scope_prefix(scope);
    std::shared_lock<std::shared_mutex> lock(impl_->rw);
    return impl_->get_record(prefix, message_id, "find_message");
}

std::optional<std::string> StateStore::find_key(const std::string& scope, const std::string& key) const
{
    if (key.empty())
        return std::nullopt;
    const std::string k = scope_prefix(scope) + key;
    std::string v;
    std::shared_lock<std::shared_mutex> lock(impl_->rw);
    if (!impl_->get(ColumnFamilyID::Keys, k, &v, "find_key"))
        return std::nullopt;
    return v;
}

void StateStore::put_meta(const std::string& scope, const std::string& name, const std::string& value)
{
    const std::string k = scope_prefix(scope) + name;
    std::lock_guard<std::mutex> lock(impl_->write_mutex);
    impl_->recover();
    rocksdb::WriteBatch batch;
    {
        std::shared_lock<std::shared_mutex> read_lock(impl_->rw);
        impl_->require_open("put_meta");
        check("put_meta (batch)", batch.Put(impl_->cf(ColumnFamilyID::Meta), k, value));
    }
    impl_->write(batch, Impl::Durability::Synced, "put_meta");
}

std::optional<std::string> StateStore::get_meta(const std::string& scope, const std::string& name) const
{
    const std::string k = scope_prefix(scope) + name;
    std::string v;
    std::shared_lock<std::shared_mutex> lock(impl_->rw);
    if (!impl_->get(ColumnFamilyID::Meta, k, &v, "get_meta"))
        return std::nullopt;
    return v;
}

std::vector<DeliveryRecord> StateStore::list(const std::string& scope, size_t limit, uint64_t from, uint64_t to) const
{
    const std::string prefix = scope_prefix(scope);
    std::vector<DeliveryRecord> out;
    if (limit == 0)
        return out;
    std::shared_lock<std::shared_mutex> lock(impl_->rw);
    impl_->require_open("list");
    // One snapshot for the index walk and the record reads, so the listing is consistent.
    const rocksdb::Snapshot* snap = impl_->db->GetSnapshot();
    struct SnapshotGuard {
        rocksdb::DB* db;
        const rocksdb::Snapshot* s;
        ~SnapshotGuard() { db->ReleaseSnapshot(s); }
    } guard{impl_->db, snap};
    rocksdb::ReadOptions ro;
    ro.snapshot = snap;

    std::unique_ptr<rocksdb::Iterator> it(impl_->db->NewIterator(ro, impl_->cf(ColumnFamilyID::ByLsn)));
    for (it->Seek(prefix + be64(from)); it->Valid() && starts_with(it->key(), prefix); it->Next()) {
        rocksdb::Slice k = it->key();
        if (k.size() < prefix.size() + 8)
            continue;
        ByteReader lsn_reader(std::string_view(k.data() + prefix.size(), 8));
        const uint64_t lsn = lsn_reader.u64();
        if (lsn >= to)
            break;
        const std::string message_id(k.data() + prefix.size() + 8, k.size() - prefix.size() - 8);
        std::string v;
        rocksdb::Status st = impl_->db->Get(ro, impl_->cf(ColumnFamilyID::Deliveries), prefix + message_id, &v);
        if (st.IsNotFound())
            continue;
        check("list (read)", st);
        DeliveryRecord r = decode_record(v, message_id);
        if (r.source_lsn != lsn)
            continue;  // stale index entry
        out.push_back(std::move(r));
        if (out.size() >= limit)
            break;
    }
    check("list (iterate)", it->status());
    return out;
}

uint64_t StateStore::approximate_size() const
{
    uint64_t total = 0;
    std::shared_lock<std::shared_mutex> lock(impl_->rw);
    if (!impl_->db)
        return 0;
    for (size_t i = 0; i < static_cast<size_t>(ColumnFamilyID::Count); ++i) {
        uint64_t v = 0;
        if (impl_->db->GetIntProperty(impl_->handles[i], rocksdb::DB::Properties::kTotalSstFilesSize, &v))
            total += v;
        if (impl_->db->GetIntProperty(impl_->handles[i], rocksdb::DB::Properties::kCurSizeAllMemTables, &v))
            total += v;
    }
    return total;
}

size_t StateStore::sweep(const RetentionPolicy& policy, int64_t now_us)
{
    if (!policy.enabled())
        return 0;
    std::vector<std::string> prefixes;
    {
        std::lock_guard<std::mutex> lock(impl_->write_mutex);
        for (const auto& [prefix, n] : impl_->counts)
            if (n > 0)
                prefixes.push_back(prefix);
    }
    size_t deleted = 0;
    for (const auto& prefix : prefixes)
        deleted += impl_->sweep_scope(prefix, policy, now_us);
    return deleted;
}

void StateStore::start_retention(const RetentionPolicy& policy, std::chrono::milliseconds interval)
{
    if (!policy.enabled() || impl_->sweeper.joinable())
        return;
    impl_->sweeper = std::thread([this, policy, interval] {
        std::unique_lock<std::mutex> lock(impl_->sweeper_mu);
        while (!impl_->sweeper_cv.wait_for(lock, interval, [this] { return impl_->stopping.load(); })) {
            lock.unlock();
            try {
                const auto started = std::chrono::steady_clock::now();
                const size_t n = sweep(policy, unix_now_us());
                if (n > 0)
                    spdlog::debug("event=state_swept deleted={} records={} ms={}", n, record_count(),
                                  std::chrono::duration_cast<std::chrono::milliseconds>(
                                      std::chrono::steady_clock::now() - started)
                                      .count());
            } catch (const std::exception& e) {
                spdlog::warn("event=state_sweep_failed error={} action=\"trying again in {} ms\"", logq(e.what()),
                             interval.count());
            }
            lock.lock();
        }
    });
}

uint64_t StateStore::record_count() const { return impl_->total; }

uint64_t StateStore::record_count(const std::string& scope) const
{
    const std::string prefix = scope_prefix(scope);
    std::lock_guard<std::mutex> lock(impl_->write_mutex);
    auto it = impl_->counts.find(prefix);
    return it == impl_->counts.end() ? 0 : it->second;
}

uint64_t StateStore::swept_count() const { return impl_->swept; }

}  // namespace atx::applier
