// Bounds-checked readers and writers for pg_atx's wire formats.
//
// Shared by the extension (message encoding) and the applier (message decoding
// and the replication protocol). Pure C++: must not include postgres.h.
// All integers are big-endian (network order), as in the FE/BE protocol.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>

namespace atx {

// Thrown when input ends early or a length field points past the end.
class DecodeError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

class ByteReader {
public:
    explicit ByteReader(std::string_view data) : data_(data) {}

    uint8_t u8() { return static_cast<uint8_t>(take(1)[0]); }
    uint16_t u16() { return static_cast<uint16_t>(be(take(2))); }
    uint32_t u32() { return static_cast<uint32_t>(be(take(4))); }
    uint64_t u64() { return be(take(8)); }
    int64_t i64() { return static_cast<int64_t>(u64()); }
    std::string_view bytes(size_t n) { return take(n); }
    // Length-prefixed strings; the prefix width is part of the format.
    std::string_view str16() { return take(u16()); }
    std::string_view str32() { return take(u32()); }
    std::string_view rest() { return take(remaining()); }

    size_t remaining() const { return data_.size() - pos_; }
    size_t position() const { return pos_; }
    bool at_end() const { return pos_ == data_.size(); }

private:
    std::string_view take(size_t n)
    {
        if (n > remaining())
            throw DecodeError("truncated input: need " + std::to_string(n) + " bytes at offset " +
                              std::to_string(pos_) + ", have " + std::to_string(remaining()));
        std::string_view out = data_.substr(pos_, n);
        pos_ += n;
        return out;
    }
    static uint64_t be(std::string_view b)
    {
        uint64_t v = 0;
        for (char c : b)
            v = (v << 8) | static_cast<uint8_t>(c);
        return v;
    }

    std::string_view data_;
    size_t pos_ = 0;
};

class ByteWriter {
public:
    void u8(uint8_t v) { out_.push_back(static_cast<char>(v)); }
    void u16(uint16_t v) { put(v, 2); }
    void u32(uint32_t v) { put(v, 4); }
    void u64(uint64_t v) { put(v, 8); }
    void i64(int64_t v) { put(static_cast<uint64_t>(v), 8); }
    void bytes(std::string_view b) { out_.append(b.data(), b.size()); }
    // Throws std::length_error when the value does not fit its prefix.
    void str16(std::string_view s)
    {
        if (s.size() > UINT16_MAX)
            throw std::length_error("string of " + std::to_string(s.size()) + " bytes exceeds 65535");
        u16(static_cast<uint16_t>(s.size()));
        bytes(s);
    }
    void str32(std::string_view s)
    {
        if (s.size() > UINT32_MAX)
            throw std::length_error("string exceeds 4 GiB");
        u32(static_cast<uint32_t>(s.size()));
        bytes(s);
    }

    const std::string& data() const { return out_; }
    std::string take() { return std::move(out_); }
    size_t size() const { return out_.size(); }

private:
    void put(uint64_t v, int n)
    {
        for (int i = n - 1; i >= 0; --i)
            out_.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
    }
    std::string out_;
};

}  // namespace atx
