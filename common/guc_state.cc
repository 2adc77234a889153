// Bounds-checked reading of SerializeGUCState's bytes; see guc_state.h.
#include "guc_state.h"

#include <cstring>

#include "cpp_only.h"

namespace {

// A string that ends inside the buffer; nullptr when no NUL comes before the end.
const char* take_string(AtxGucStateReader* r)
{
    const void* nul = std::memchr(r->p, '\0', static_cast<size_t>(r->end - r->p));
    if (nul == nullptr)
        return nullptr;
    const char* s = r->p;
    r->p = static_cast<const char*>(nul) + 1;
    return s;
}

// A native integer of type T at p (unaligned).
template <typename T>
int64_t load(const char* p)
{
    T v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

// A native integer of `size` bytes (1, 2, 4 or 8) into *out, sign-extended.
bool take_int(AtxGucStateReader* r, size_t size, int64_t* out)
{
    if (static_cast<size_t>(r->end - r->p) < size)
        return false;
    switch (size) {
    case 1: *out = load<int8_t>(r->p); break;
    case 2: *out = load<int16_t>(r->p); break;
    case 4: *out = load<int32_t>(r->p); break;
    case 8: *out = load<int64_t>(r->p); break;
    default: return false;
    }
    r->p += size;
    return true;
}

}  // namespace

const char* atx_guc_state_begin(AtxGucStateReader* r, const char* buf, size_t len, AtxGucStateLayout layout)
{
    r->layout = layout;
    if (layout.size_field != sizeof(size_t))
        return "the byte count is not a size_t";
    if (len < layout.size_field)
        return "the buffer is shorter than its byte count";
    size_t actual;
    std::memcpy(&actual, buf, sizeof actual);
    if (actual > len - layout.size_field)
        return "the byte count runs past the buffer";
    r->p = buf + layout.size_field;
    r->end = r->p + actual;
    return nullptr;
}

int atx_guc_state_next(AtxGucStateReader* r, AtxGucStateEntry* e, const char** why)
{
    int64_t v;
    if (r->p == r->end)
        return 0;
    if ((e->name = take_string(r)) == nullptr || e->name[0] == '\0') {
        *why = e->name ? "an entry without a name" : "a name runs past the end";
        return -1;
    }
    if ((e->value = take_string(r)) == nullptr || (e->sourcefile = take_string(r)) == nullptr) {
        *why = "a value or source file runs past the end";
        return -1;
    }
    e->sourceline = 0;
    if (e->sourcefile[0] != '\0') {
        if (!take_int(r, r->layout.sourceline, &v)) {
            *why = "a source line runs past the end";
            return -1;
        }
        e->sourceline = static_cast<int>(v);
    }
    // source, scontext, srole
    const size_t sizes[3] = {r->layout.source, r->layout.scontext, r->layout.srole};
    static const char* const short_of[3] = {"a source runs past the end", "a setting context runs past the end",
                                            "a setting role runs past the end"};
    int64_t f[3];
    for (int i = 0; i < 3; ++i)
        if (!take_int(r, sizes[i], &f[i])) {
            *why = short_of[i];
            return -1;
        }
    e->source = static_cast<int>(f[0]);
    e->scontext = static_cast<int>(f[1]);
    e->srole = static_cast<uint32_t>(f[2]);
    return 1;
}
