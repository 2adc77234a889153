// Read-only access to atx-applier's RocksDB state for the operator CLI.
//
// The daemon holds RocksDB's LOCK file, so the CLI opens the directory with
// rocksdb::DB::OpenForReadOnly (no lock taken, a point-in-time view including the WAL) and never
// writes through this class. The record format is the one of docs/applier-state.md (version 1).
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "state_store.h"

namespace atx::applier {

class StateReader {
public:
    // nullptr (and *why set) when the directory is missing or cannot be opened.
    static std::unique_ptr<StateReader> open(const std::string& dir, std::string* why);
    ~StateReader();

    std::optional<DeliveryRecord> find_message(const std::string& scope, const std::string& id) const;
    std::optional<std::string> find_key(const std::string& scope, const std::string& key) const;
    std::optional<std::string> get_meta(const std::string& scope, const std::string& name) const;
    // The newest record of a scope (highest LSN), if any.
    std::optional<DeliveryRecord> last(const std::string& scope) const;
    // Records of a scope updated at or after since_us (walks backwards from the newest LSN,
    // stopping at the first older one or after `cap` records).
    size_t count_since(const std::string& scope, int64_t since_us, size_t cap = 1000000) const;

private:
    struct Impl;
    explicit StateReader(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
};

}  // namespace atx::applier
