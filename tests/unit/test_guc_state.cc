// Reading SerializeGUCState's bytes (common/guc_state.h): what the server writes is read back
// exactly, and bytes that do not fit the layout are reported, never read past.
#include <catch2/catch.hpp>

#include <cstring>
#include <string>
#include <vector>

#include "guc_state.h"

namespace {

// The sizes on Linux/x86-64 and arm64 builds of PostgreSQL 16-18.
const AtxGucStateLayout kLayout = {sizeof(size_t), 4, 4, 4, 4};

template <typename T>
void put(std::string& b, T v)
{
    b.append(reinterpret_cast<const char*>(&v), sizeof v);
}

// One entry as guc.c's serialize_variable writes it; extra: bytes a future layout might add.
std::string entry(const std::string& name, const std::string& value, const std::string& file, int line, int source,
                  int scontext, uint32_t srole, const std::string& extra = "")
{
    std::string b = name + '\0' + value + '\0' + file + '\0';
    if (!file.empty())
        put(b, line);
    put(b, source);
    put(b, scontext);
    put(b, srole);
    return b + extra;
}

std::string state(const std::string& entries, size_t slack = 0)
{
    std::string b;
    put(b, entries.size());
    return b + entries + std::string(slack, 'x');  // EstimateGUCStateSpace may overestimate
}

struct Read {
    int rc = 0;
    const char* why = nullptr;
    std::vector<AtxGucStateEntry> entries;
    const char* begin_why = nullptr;
};

Read read_all(const std::string& buf, AtxGucStateLayout layout = kLayout)
{
    Read out;
    AtxGucStateReader r;
    if ((out.begin_why = atx_guc_state_begin(&r, buf.data(), buf.size(), layout)) != nullptr)
        return out;
    AtxGucStateEntry e;
    while ((out.rc = atx_guc_state_next(&r, &e, &out.why)) == 1)
        out.entries.push_back(e);
    return out;
}

}  // namespace

TEST_CASE("SerializeGUCState: entries with and without a source file are read back exactly")
{
    const std::string buf = state(entry("work_mem", "8192", "", 0, 14, 4, 10) +
                                      entry("search_path", "app, public", "/etc/pg/conf.d/x.conf", 7, 3, 4, 10) +
                                      entry("app.tenant", "", "", 0, 14, 4, 16384),
                                  13);
    const Read r = read_all(buf);
    REQUIRE(r.begin_why == nullptr);
    CHECK(r.rc == 0);
    REQUIRE(r.entries.size() == 3);
    CHECK(std::string(r.entries[0].name) == "work_mem");
    CHECK(std::string(r.entries[0].value) == "8192");
    CHECK(std::string(r.entries[0].sourcefile).empty());
    CHECK(r.entries[0].source == 14);
    CHECK(r.entries[1].sourceline == 7);
    CHECK(std::string(r.entries[1].sourcefile) == "/etc/pg/conf.d/x.conf");
    CHECK(std::string(r.entries[1].value) == "app, public");
    CHECK(r.entries[2].srole == 16384u);
    CHECK(std::string(r.entries[2].value).empty());
}

TEST_CASE("SerializeGUCState: no entries")
{
    const Read r = read_all(state(""));
    CHECK(r.begin_why == nullptr);
    CHECK(r.rc == 0);
    CHECK(r.entries.empty());
}

TEST_CASE("SerializeGUCState: every truncation is reported, nothing is read past the byte count")
{
    const std::string entries =
        entry("work_mem", "8192", "", 0, 14, 4, 10) + entry("lc_messages", "C", "/f", 3, 3, 2, 10);
    for (size_t cut = 0; cut < entries.size(); ++cut) {
        INFO("entries cut to " << cut << " bytes");
        // The byte count says `cut`: whatever follows in the buffer is not read.
        std::string buf;
        put(buf, cut);
        buf += entries.substr(0, cut);
        buf += std::string(64, 'x');
        const Read r = read_all(buf);
        REQUIRE(r.begin_why == nullptr);
        if (cut == 0 || cut == entry("work_mem", "8192", "", 0, 14, 4, 10).size()) {
            CHECK(r.rc == 0);  // no entry, or exactly one whole entry
        } else {
            CHECK(r.rc == -1);
            CHECK(r.why != nullptr);
        }
    }
}

TEST_CASE("SerializeGUCState: a byte count past the buffer, a short buffer, a foreign size field")
{
    std::string buf;
    put(buf, size_t{1000});
    buf += entry("work_mem", "8192", "", 0, 14, 4, 10);
    CHECK(read_all(buf).begin_why != nullptr);
    CHECK(read_all(std::string(3, '\0')).begin_why != nullptr);
    AtxGucStateLayout other = kLayout;
    other.size_field = 4;
    CHECK(read_all(state(entry("work_mem", "8192", "", 0, 14, 4, 10)), other).begin_why != nullptr);
}

TEST_CASE("SerializeGUCState: a layout that grew a field is not read as the old one")
{
    // A release that wrote four more bytes per entry: the old reading ends out of step. Either
    // it fails here, or it yields names that are no parameters (guc_capture.cc looks each up).
    const std::string four(4, '\0');
    const Read r = read_all(
        state(entry("work_mem", "8192", "", 0, 14, 4, 10, four) + entry("search_path", "app", "", 0, 14, 4, 10, four)));
    bool misread = r.rc == -1;
    for (const auto& e : r.entries)
        misread = misread || (std::strcmp(e.name, "work_mem") != 0 && std::strcmp(e.name, "search_path") != 0);
    CHECK(misread);
    // And wider fields than the server's are not read as its fields.
    AtxGucStateLayout wide = kLayout;
    wide.srole = 8;
    const Read w = read_all(state(entry("work_mem", "8192", "", 0, 14, 4, 10) + entry("x", "y", "", 0, 14, 4, 10)));
    const Read w2 =
        read_all(state(entry("work_mem", "8192", "", 0, 14, 4, 10) + entry("x", "y", "", 0, 14, 4, 10)), wide);
    CHECK(w.rc == 0);
    CHECK((w2.rc == -1 || w2.entries.size() != 2 || std::strcmp(w2.entries[1].name, "x") != 0));
}
