// The pg_atx output plugin's binary record ("frame"): written by ext/output_plugin.cc in the
// walsender, read by the applier from each XLogData message.
//
//   'M'    type                                  1 byte
//   u64    start LSN of the message's WAL record  8 bytes, big-endian
//          (the XLogData's dataStart is its end: the applier names a message by its start)
//   ...    the raw message payload (common/message.h)
//
// Pure C++ (no postgres.h).
#pragma once

#include <cstdint>
#include <string_view>

namespace atx {

inline constexpr char kFrameMessage = 'M';
inline constexpr size_t kFrameHeaderSize = 9;

// The header of a frame for the message starting at `start`.
void encode_frame_header(uint64_t start, char out[kFrameHeaderSize]) noexcept;

struct Frame {
    uint64_t start = 0;
    std::string_view payload;  // points into the parsed buffer
};
// Throws DecodeError when the type byte is not 'M' or the start LSN is missing.
Frame parse_frame(std::string_view data);

}  // namespace atx
