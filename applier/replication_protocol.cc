// Parsing and building of replication CopyData messages; see replication_protocol.h.
#include "replication_protocol.h"

#include <chrono>
#include <cstdio>

#include "bytes.h"

namespace atx::applier {

CopyMessage parse_copy_data(std::string_view data)
{
    ByteReader r(data);
    const char type = static_cast<char>(r.u8());
    switch (type) {
    case 'w': {
        XLogData x;
        x.data_start = r.u64();
        x.wal_end = r.u64();
        x.send_time = r.i64();
        x.payload = r.rest();
        return x;
    }
    case 'k': {
        Keepalive k;
        k.wal_end = r.u64();
        k.send_time = r.i64();
        const uint8_t req = r.u8();
        if (req > 1)
            throw DecodeError("keepalive replyRequested byte is " + std::to_string(req));
        k.reply_requested = req == 1;
        if (!r.at_end())
            throw DecodeError(std::to_string(r.remaining()) + " trailing bytes after keepalive");
        return k;
    }
    default: {
        char buf[8];
        std::snprintf(buf, sizeof buf, "0x%02x", static_cast<unsigned>(static_cast<uint8_t>(type)));
        throw DecodeError(std::string("unknown replication message type ") + buf);
    }
    }
}

std::string build_status_update(Lsn write, Lsn flush, Lsn apply, int64_t send_time, bool reply_requested)
{
    ByteWriter w;
    w.u8('r');
    w.u64(write);
    w.u64(flush);
    w.u64(apply);
    w.i64(send_time);
    w.u8(reply_requested ? 1 : 0);
    return w.take();
}

std::string format_lsn(Lsn lsn)
{
    char buf[32];
    std::snprintf(buf, sizeof buf, "%X/%X", static_cast<unsigned>(lsn >> 32), static_cast<unsigned>(lsn & 0xffffffffu));
    return buf;
}

std::optional<Lsn> parse_lsn(std::string_view text)
{
    auto half = [](std::string_view s) -> std::optional<uint64_t> {
        if (s.empty() || s.size() > 8)
            return std::nullopt;
        uint64_t v = 0;
        for (char c : s) {
            int d;
            if (c >= '0' && c <= '9')
                d = c - '0';
            else if (c >= 'a' && c <= 'f')
                d = c - 'a' + 10;
            else if (c >= 'A' && c <= 'F')
                d = c - 'A' + 10;
            else
                return std::nullopt;
            v = (v << 4) | static_cast<uint64_t>(d);
        }
        return v;
    };
    const size_t slash = text.find('/');
    if (slash == std::string_view::npos)
        return std::nullopt;
    auto hi = half(text.substr(0, slash));
    auto lo = half(text.substr(slash + 1));
    if (!hi || !lo)
        return std::nullopt;
    return (*hi << 32) | *lo;
}

int64_t unix_now_us()
{
    using namespace std::chrono;
    return duration_cast<microseconds>(system_clock::now().time_since_epoch()).count();
}

int64_t pg_now() { return unix_to_pg_us(unix_now_us()); }

}  // namespace atx::applier
