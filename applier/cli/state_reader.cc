// Read-only RocksDB access for the CLI; see state_reader.h.
#include "state_reader.h"

#include <cstring>

#include <rocksdb/db.h>
#include <rocksdb/options.h>

#include "bytes.h"

namespace atx::applier {

namespace {

enum Cf : size_t { kDefault = 0, kDeliveries, kKeys, kByLsn, kMeta, kCount };
const char* const kCfNames[kCount] = {"default", "deliveries", "keys", "by_lsn", "meta"};

std::optional<DeliveryRecord> decode(std::string_view v)
{
    try {
        ByteReader rd(v);
        if (rd.u8() != 1)
            return std::nullopt;
        DeliveryRecord r;
        r.message_id = std::string(rd.str16());
        r.key = std::string(rd.str16());
        r.source_lsn = rd.u64();
        const uint8_t st = rd.u8();
        if (st < 1 || st > 4)
            return std::nullopt;
        r.status = static_cast<DeliveryStatus>(st);
        r.attempts = rd.u32();
        r.last_sqlstate = std::string(rd.str16());
        r.last_error = std::string(rd.str32());
        r.updated_at_us = rd.i64();
        return r;
    } catch (const DecodeError&) {
        return std::nullopt;
    }
}

std::string prefix(const std::string& scope) { return scope + std::string(1, '\0'); }

}  // namespace

struct StateReader::Impl {
    rocksdb::DB* db = nullptr;
    std::vector<rocksdb::ColumnFamilyHandle*> all;
    rocksdb::ColumnFamilyHandle* cf[kCount] = {};

    ~Impl()
    {
        for (auto* h : all)
            db->DestroyColumnFamilyHandle(h);
        delete db;
    }
    std::optional<std::string> get(Cf which, const std::string& key) const
    {
        if (!cf[which])
            return std::nullopt;
        std::string v;
        if (db->Get(rocksdb::ReadOptions(), cf[which], key, &v).ok())
            return v;
        return std::nullopt;
    }
};

StateReader::StateReader(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
StateReader::~StateReader() = default;

std::unique_ptr<StateReader> StateReader::open(const std::string& dir, std::string* why)
{
    rocksdb::DBOptions dbo;
    std::vector<std::string> names;
    rocksdb::Status st = rocksdb::DB::ListColumnFamilies(dbo, dir, &names);
    if (!st.ok()) {
        *why = "cannot read RocksDB state in " + dir + ": " + st.ToString();
        return nullptr;
    }
    std::vector<rocksdb::ColumnFamilyDescriptor> descs;
    for (const auto& n : names)
        descs.emplace_back(n, rocksdb::ColumnFamilyOptions());
    auto impl = std::make_unique<Impl>();
    rocksdb::Options o;
    st = rocksdb::DB::OpenForReadOnly(rocksdb::DBOptions(o), dir, descs, &impl->all, &impl->db);
    if (!st.ok()) {
        *why = "cannot open RocksDB state in " + dir + " read-only: " + st.ToString();
        return nullptr;
    }
    for (size_t i = 0; i < names.size(); ++i)
        for (size_t c = 0; c < kCount; ++c)
            if (names[i] == kCfNames[c])
                impl->cf[c] = impl->all[i];
    return std::unique_ptr<StateReader>(new StateReader(std::move(impl)));
}

std::optional<DeliveryRecord> StateReader::find_message(const std::string& scope, const std::string& id) const
{
    auto v = impl_->get(kDeliveries, prefix(scope) + id);
    if (!v)
        return std::nullopt;
    return decode(*v);
}

std::optional<std::string> StateReader::find_key(const std::string& scope, const std::string& key) const
{
    return impl_->get(kKeys, prefix(scope) + key);
}

std::optional<std::string> StateReader::get_meta(const std::string& scope, const std::string& name) const
{
    return impl_->get(kMeta, prefix(scope) + name);
}

std::optional<DeliveryRecord> StateReader::last(const std::string& scope) const
{
    if (!impl_->cf[kByLsn])
        return std::nullopt;
    const std::string p = prefix(scope);
    std::unique_ptr<rocksdb::Iterator> it(impl_->db->NewIterator(rocksdb::ReadOptions(), impl_->cf[kByLsn]));
    std::string upper = p;
    upper.back() = '\1';  // scope \1 sorts after every scope \0 ... key
    it->SeekForPrev(upper);
    if (!it->Valid() || !it->key().starts_with(p))
        return std::nullopt;
    const std::string id = it->key().ToString().substr(p.size() + 8);
    return find_message(scope, id);
}

size_t StateReader::count_since(const std::string& scope, int64_t since_us, size_t cap) const
{
    if (!impl_->cf[kByLsn])
        return 0;
    const std::string p = prefix(scope);
    std::unique_ptr<rocksdb::Iterator> it(impl_->db->NewIterator(rocksdb::ReadOptions(), impl_->cf[kByLsn]));
    std::string upper = p;
    upper.back() = '\1';
    size_t n = 0;
    for (it->SeekForPrev(upper); it->Valid() && it->key().starts_with(p) && n < cap; it->Prev()) {
        const std::string id = it->key().ToString().substr(p.size() + 8);
        auto r = find_message(scope, id);
        if (!r || r->updated_at_us < since_us)
            break;
        ++n;
    }
    return n;
}

}  // namespace atx::applier
