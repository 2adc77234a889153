// Reading the byte layout of PostgreSQL's SerializeGUCState (16 and later), which pg_atx uses to
// find the parameters a session changed (ext/guc_capture.cc). The layout is private to the server
// (guc.c, serialize_variable) and may change in any release, so it is read here with every bound
// checked, and the caller cross-checks every entry against the server's own table: anything that
// does not fit is reported, never guessed at (docs/design.md, "Private assumptions").
//
//   Size   the byte count of the entries that follow (native byte order)
//   entry: name \0, value \0, sourcefile \0, [int sourceline, only when sourcefile is not empty],
//          GucSource source, GucContext scontext, Oid srole (each native, unaligned)
//
// Plain C style (no exceptions, no allocation): guc_capture.cc calls it between PostgreSQL calls.
// Pure C++, no PostgreSQL headers (tests/unit/test_guc_state.cc reads crafted buffers).
#pragma once

#include <cstddef>
#include <cstdint>

// The sizes of the binary fields, as the server's headers have them.
struct AtxGucStateLayout {
    size_t size_field;  // sizeof(Size)
    size_t sourceline;  // sizeof(int)
    size_t source;      // sizeof(GucSource)
    size_t scontext;    // sizeof(GucContext)
    size_t srole;       // sizeof(Oid)
};

struct AtxGucStateEntry {
    const char* name;  // NUL-terminated, inside the buffer
    const char* value;
    const char* sourcefile;  // "" when none
    int sourceline;          // 0 when there is no sourcefile
    int source;
    int scontext;
    uint32_t srole;
};

struct AtxGucStateReader {
    const char* p;
    const char* end;
    AtxGucStateLayout layout;
};

// Starts reading a buffer of `len` bytes. Returns nullptr, or why it cannot hold that layout.
const char* atx_guc_state_begin(AtxGucStateReader* r, const char* buf, size_t len, AtxGucStateLayout layout);

// 1: *e is the next entry; 0: the entries ended exactly at their byte count; -1: they do not fit
// the layout, *why says where.
int atx_guc_state_next(AtxGucStateReader* r, AtxGucStateEntry* e, const char** why);
