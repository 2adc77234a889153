// The pg_atx message: what atx_log writes into the WAL and atx.apply_batch executes.
//
// Layout (version 3, big-endian; see docs/message-format.md):
//
//   "ATX"  magic                       3 bytes
//   u8     format version (3)
//   u8     flags (bit 0: idempotency key present, bit 1: an atx_exec caller waits for it,
//          bit 2: cancel it when that caller is no longer waiting (atx.exec_on_abandon = cancel))
//   16     message UUID (random; derived from the parent's id for a nested emit)
//   16     lane: the messages of one lane are applied in emit order (the caller's backend
//          session, or the parent message for nested emits)
//   u8     nesting depth (0: emitted by a client session)
//   u32    database oid
//   u32    caller role oid (current_user at the call)
//   str16  caller role name (diagnostics only; the oid is what counts)
//   u32    principal: the login role that caused the message (session_user at the call; for a
//          nested emit, the principal of the parent message), charged for its apply sessions
//   str16  principal's name
//   u64    caller's top-level FullTransactionId, 0 if it had none
//   i64    emit time (PostgreSQL TimestampTz: microseconds since 2000-01-01 UTC)
//   u16    GUC count, then per GUC: str16 name, str32 value, u8 flags (bit 0: set by a superuser,
//          e.g. ALTER ROLE ... SET by one: applied with that right)
//   str32  statement
//   u16    parameter count, then per parameter:
//            u32 type oid, str16 type name, u8 flags (bit 0 NULL, bit 1 binary), str32 value
//   str16  idempotency key (only with flag bit 0)
//   32     HMAC-SHA256 over every preceding byte
//
// Version 2 (pg_atx 0.2) is version 3 without flag bit 2, and its nested emits carry the apply
// session's login as session user. Version 1 (pg_atx 0.1) lacks flag bits 1 and 2, lane, depth,
// the session user and GUC flags. Both are still decoded (messages written before an upgrade);
// version 1 with a zero lane and depth 0.
//
// Pure C++ (no postgres.h): the extension and the applier both link it.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "bytes.h"

namespace atx {

inline constexpr char kMagic[3] = {'A', 'T', 'X'};
inline constexpr uint8_t kFormatVersion = 3;
inline constexpr uint8_t kOldestFormatVersion = 1;
inline constexpr size_t kMacSize = 32;
// Logical message prefix used by atx_log (the origin tag is the real guard).
inline constexpr const char* kMessagePrefix = "pg_atx";
// Replication origin that tags records written by atx_log.
inline constexpr const char* kEmitOriginName = "pg_atx";

inline constexpr uint8_t kFlagHasKey = 0x01;
inline constexpr uint8_t kFlagWaited = 0x02;
inline constexpr uint8_t kFlagCancelIfAbandoned = 0x04;
inline constexpr uint8_t kParamNull = 0x01;
inline constexpr uint8_t kParamBinary = 0x02;
inline constexpr uint8_t kGucPrivileged = 0x01;

// A message written by a newer pg_atx: kept, never executed or dropped.
class UnsupportedVersion : public DecodeError {
public:
    explicit UnsupportedVersion(uint8_t v)
        : DecodeError("unsupported pg_atx message format version " + std::to_string(v) +
                      " (this build knows versions " + std::to_string(kOldestFormatVersion) + " to " +
                      std::to_string(kFormatVersion) + ")"),
          version(v)
    {
    }
    uint8_t version;
};

using Uuid = std::array<uint8_t, 16>;

struct GucSetting {
    std::string name;
    std::string value;
    bool privileged = false;  // set in the caller's session with superuser rights (version 2)
};

struct Param {
    uint32_t type_oid = 0;
    std::string type_name;
    bool is_null = false;
    bool binary = false;  // value is the type's send() output, else its output() text
    std::string value;
};

struct Message {
    uint8_t version = kFormatVersion;  // as decoded; encode_body writes this version
    Uuid id{};
    Uuid lane{};                       // zero for version 1
    uint8_t depth = 0;                 // 0: emitted by a client session
    bool waited = false;               // an atx_exec caller waits for the outcome
    bool cancel_if_abandoned = false;  // version 3: not applied once its waiter stopped waiting
    uint32_t database_oid = 0;
    uint32_t role_oid = 0;
    std::string role_name;
    uint32_t session_role_oid = 0;  // 0 for version 1
    std::string session_role_name;
    uint64_t caller_xid = 0;
    int64_t emit_time = 0;
    std::vector<GucSetting> gucs;
    std::string statement;
    std::vector<Param> params;
    std::optional<std::string> key;
};

// Serialises everything but the MAC, in m.version's format. Throws std::length_error when a field
// does not fit its length prefix (e.g. more than 65535 parameters), std::invalid_argument when
// m uses what its version cannot carry.
std::string encode_body(const Message& m);

// A payload split into its parts, without verifying the MAC (only the server
// holds the key). Throws DecodeError / UnsupportedVersion on malformed input.
struct DecodedPayload {
    Message message;
    std::string_view body;  // the bytes the MAC covers
    std::string_view mac;   // kMacSize bytes
};
DecodedPayload decode_payload(std::string_view payload);

// Reads just the version byte after the magic; throws DecodeError if no magic.
uint8_t peek_version(std::string_view payload);

bool operator==(const GucSetting& a, const GucSetting& b);
bool operator==(const Param& a, const Param& b);
bool operator==(const Message& a, const Message& b);

std::string uuid_to_string(const Uuid& id);
std::optional<Uuid> uuid_from_string(std::string_view s);

}  // namespace atx
