// A throwaway PostgreSQL cluster for Catch2 tests, from the same harness as the shell tests
// (tests/lib/cluster.sh): initdb as the server user, unix socket in a temp dir, wal_level=logical.
// Stopped (immediately) and deleted by the destructor, also when the test fails.
#pragma once

#include <array>
#include <cstdio>
#include <stdexcept>
#include <string>

#ifndef ATX_SOURCE_DIR
#error "ATX_SOURCE_DIR must name the source tree (tests/unit/CMakeLists.txt defines it)"
#endif

namespace atx::test {

inline std::string run_shell(const std::string& script)
{
    const std::string cmd = "bash -c '. \"" ATX_SOURCE_DIR "/tests/lib/cluster.sh\"; " + script + "' 2>&1";
    FILE* p = popen(cmd.c_str(), "r");
    if (!p)
        throw std::runtime_error("popen failed");
    std::string out;
    std::array<char, 4096> buf{};
    size_t n;
    while ((n = fread(buf.data(), 1, buf.size(), p)) > 0)
        out.append(buf.data(), n);
    const int rc = pclose(p);
    if (rc != 0)
        throw std::runtime_error("harness command failed (" + std::to_string(rc) + "): " + script + "\n" + out);
    while (!out.empty() && (out.back() == '\n' || out.back() == '\r'))
        out.pop_back();
    return out;
}

class LiveCluster {
public:
    LiveCluster()
    {
        dir_ = run_shell("atx_cluster_mkdir catch2");
        run_shell("atx_cluster_init " + dir_ + " && atx_cluster_start " + dir_);
        conninfo_ = run_shell("atx_cluster_conninfo " + dir_);
    }
    ~LiveCluster()
    {
        try {
            run_shell("atx_cluster_stop " + dir_ + " immediate; rm -rf " + dir_);
        } catch (...) {
        }
    }
    LiveCluster(const LiveCluster&) = delete;
    LiveCluster& operator=(const LiveCluster&) = delete;

    // Base conninfo (no dbname): "host=<dir> port=<n> user=postgres".
    const std::string& conninfo() const { return conninfo_; }

private:
    std::string dir_;
    std::string conninfo_;
};

}  // namespace atx::test
