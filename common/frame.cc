#include "frame.h"

#include "bytes.h"
#include "cpp_only.h"

namespace atx {

void encode_frame_header(uint64_t start, char out[kFrameHeaderSize]) noexcept
{
    out[0] = kFrameMessage;
    for (int i = 0; i < 8; i++)
        out[1 + i] = static_cast<char>((start >> (8 * (7 - i))) & 0xff);
}

Frame parse_frame(std::string_view data)
{
    ByteReader r(data);
    if (r.u8() != static_cast<uint8_t>(kFrameMessage))
        throw DecodeError("unexpected pg_atx output record (expected 'M')");
    Frame f;
    f.start = r.u64();
    if (f.start == 0)
        throw DecodeError("pg_atx output record without a start LSN");
    f.payload = r.rest();
    return f;
}

}  // namespace atx
