// Metrics::render: every metric docs/operations.md lists is there with the documented type, and
// the whole text parses as the Prometheus text exposition format 0.0.4. The checker below is
// written from the format's specification, not from render(), and has tests of its own.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "metrics.h"

using namespace atx::applier;

namespace {

struct Sample {
    std::string name;
    std::map<std::string, std::string> labels;  // unescaped values
    double value = 0;
};

struct Exposition {
    std::map<std::string, std::string> types;  // family -> counter|gauge|histogram|summary|untyped
    std::map<std::string, std::string> help;
    std::vector<Sample> samples;
    std::vector<std::string> errors;  // empty: valid

    const Sample* find(const std::string& name, const std::map<std::string, std::string>& labels = {}) const
    {
        for (const auto& s : samples) {
            if (s.name != name)
                continue;
            bool match = true;
            for (const auto& [k, v] : labels)
                match = match && s.labels.count(k) && s.labels.at(k) == v;
            if (match)
                return &s;
        }
        return nullptr;
    }
};

bool metric_name(const std::string& s) { return std::regex_match(s, std::regex("[a-zA-Z_:][a-zA-Z0-9_:]*")); }
bool label_name(const std::string& s) { return std::regex_match(s, std::regex("[a-zA-Z_][a-zA-Z0-9_]*")); }

// A sample value: a Go ParseFloat number, or +Inf / -Inf / NaN.
bool parse_value(const std::string& s, double* v)
{
    if (s == "+Inf" || s == "Inf") {
        *v = INFINITY;
        return true;
    }
    if (s == "-Inf") {
        *v = -INFINITY;
        return true;
    }
    if (s == "NaN") {
        *v = NAN;
        return true;
    }
    if (!std::regex_match(s, std::regex(R"([+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?)")))
        return false;
    *v = std::strtod(s.c_str(), nullptr);
    return true;
}

// The family a sample belongs to: histogram and summary samples carry a suffix.
std::string family_of(const std::string& name, const std::map<std::string, std::string>& types)
{
    for (const char* suffix : {"_bucket", "_sum", "_count"}) {
        const std::string sx(suffix);
        if (name.size() > sx.size() && name.compare(name.size() - sx.size(), sx.size(), sx) == 0) {
            const std::string base = name.substr(0, name.size() - sx.size());
            auto it = types.find(base);
            if (it != types.end() && (it->second == "histogram" || (it->second == "summary" && sx != "_bucket")))
                return base;
        }
    }
    return name;
}

Exposition parse_exposition(const std::string& text)
{
    Exposition e;
    auto err = [&](size_t lineno, const std::string& what) {
        e.errors.push_back("line " + std::to_string(lineno) + ": " + what);
    };
    if (!text.empty() && text.back() != '\n')
        e.errors.push_back("the text does not end with a newline");
    std::set<std::string> done_families;  // families whose group of lines has ended
    std::string current;                  // family of the previous line
    std::set<std::string> series;
    std::istringstream in(text);
    std::string line;
    size_t lineno = 0;
    auto enter = [&](const std::string& fam) {
        if (fam == current)
            return;
        if (done_families.count(fam))
            err(lineno, "lines of " + fam + " are not one group");
        if (!current.empty())
            done_families.insert(current);
        current = fam;
    };
    while (std::getline(in, line)) {
        ++lineno;
        if (line.empty())
            continue;
        if (line[0] == '#') {
            std::smatch m;
            if (std::regex_match(line, m, std::regex(R"(# (HELP|TYPE) (\S+) ?(.*))"))) {
                const std::string kind = m[1], name = m[2], rest = m[3];
                if (!metric_name(name))
                    err(lineno, "bad metric name '" + name + "'");
                enter(name);
                if (kind == "TYPE") {
                    if (!std::regex_match(rest, std::regex("counter|gauge|histogram|summary|untyped")))
                        err(lineno, "bad type '" + rest + "'");
                    if (e.types.count(name))
                        err(lineno, "second TYPE for " + name);
                    for (const auto& s : e.samples)
                        if (family_of(s.name, {{name, rest}}) == name)
                            err(lineno, "TYPE of " + name + " after its samples");
                    e.types[name] = rest;
                } else {
                    if (e.help.count(name))
                        err(lineno, "second HELP for " + name);
                    for (size_t i = 0; i < rest.size(); ++i)
                        if (rest[i] == '\\' && (i + 1 == rest.size() || (rest[i + 1] != '\\' && rest[i + 1] != 'n')))
                            err(lineno, "bad escape in HELP");
                        else if (rest[i] == '\\')
                            ++i;
                    e.help[name] = rest;
                }
            }
            continue;  // other comments are allowed
        }
        // name [{labels}] value [timestamp]
        size_t i = 0;
        while (i < line.size() && line[i] != '{' && line[i] != ' ')
            ++i;
        Sample s;
        s.name = line.substr(0, i);
        if (!metric_name(s.name))
            err(lineno, "bad metric name '" + s.name + "'");
        if (i < line.size() && line[i] == '{') {
            ++i;
            for (;;) {
                if (i < line.size() && line[i] == '}') {
                    ++i;
                    break;
                }
                size_t eq = line.find('=', i);
                if (eq == std::string::npos) {
                    err(lineno, "unterminated labels");
                    break;
                }
                const std::string lname = line.substr(i, eq - i);
                if (!label_name(lname) || lname.rfind("__", 0) == 0)
                    err(lineno, "bad label name '" + lname + "'");
                i = eq + 1;
                if (i >= line.size() || line[i] != '"') {
                    err(lineno, "label value not quoted");
                    break;
                }
                ++i;
                std::string v;
                bool closed = false;
                while (i < line.size()) {
                    const char c = line[i++];
                    if (c == '"') {
                        closed = true;
                        break;
                    }
                    if (c == '\\') {
                        const char n = i < line.size() ? line[i++] : '\0';
                        if (n == '\\')
                            v += '\\';
                        else if (n == '"')
                            v += '"';
                        else if (n == 'n')
                            v += '\n';
                        else
                            err(lineno, "bad escape in label value");
                    } else {
                        v += c;
                    }
                }
                if (!closed) {
                    err(lineno, "unterminated label value");
                    break;
                }
                if (s.labels.count(lname))
                    err(lineno, "label " + lname + " twice");
                s.labels[lname] = v;
                if (i < line.size() && line[i] == ',')
                    ++i;
                else if (i < line.size() && line[i] == '}') {
                    ++i;
                    break;
                } else {
                    err(lineno, "expected ',' or '}' after a label");
                    break;
                }
            }
        }
        if (i >= line.size() || line[i] != ' ') {
            err(lineno, "no value");
            continue;
        }
        std::istringstream rest(line.substr(i + 1));
        std::string value, ts, extra;
        rest >> value >> ts >> extra;
        if (!parse_value(value, &s.value))
            err(lineno, "bad value '" + value + "'");
        if (!ts.empty() && !std::regex_match(ts, std::regex("-?[0-9]+")))
            err(lineno, "bad timestamp '" + ts + "'");
        if (!extra.empty())
            err(lineno, "trailing text");
        const std::string fam = family_of(s.name, e.types);
        if (!e.types.count(fam))
            err(lineno, "sample of " + fam + " without a TYPE before it");
        enter(fam);
        std::string key = s.name;
        for (const auto& [k, v] : s.labels)
            key += "\x1f" + k + "=" + v;
        if (!series.insert(key).second)
            err(lineno, "series " + s.name + " twice");
        e.samples.push_back(std::move(s));
    }
    // Histograms: per label set, le ascending, counts cumulative, +Inf present and equal to _count.
    for (const auto& [fam, type] : e.types) {
        if (type != "histogram")
            continue;
        std::map<std::string, std::vector<std::pair<double, double>>> buckets;
        std::map<std::string, double> counts;
        for (const auto& s : e.samples) {
            auto labels = s.labels;
            labels.erase("le");
            std::string key;
            for (const auto& [k, v] : labels)
                key += k + "=" + v + ",";
            if (s.name == fam + "_bucket") {
                double le = 0;
                if (!s.labels.count("le") || !parse_value(s.labels.at("le"), &le))
                    e.errors.push_back(fam + ": bucket without a valid le");
                buckets[key].push_back({le, s.value});
            } else if (s.name == fam + "_count") {
                counts[key] = s.value;
            } else if (s.name == fam) {
                e.errors.push_back(fam + ": histogram sample without suffix");
            }
        }
        for (const auto& [key, bs] : buckets) {
            for (size_t i = 1; i < bs.size(); ++i)
                if (!(bs[i].first > bs[i - 1].first) || bs[i].second < bs[i - 1].second)
                    e.errors.push_back(fam + "{" + key + "}: buckets not ascending and cumulative");
            if (bs.empty() || !std::isinf(bs.back().first))
                e.errors.push_back(fam + "{" + key + "}: no +Inf bucket");
            else if (!counts.count(key) || counts[key] != bs.back().second)
                e.errors.push_back(fam + "{" + key + "}: +Inf bucket differs from _count");
        }
    }
    return e;
}

std::string joined(const std::vector<std::string>& v)
{
    std::string s;
    for (const auto& x : v)
        s += x + "\n";
    return s;
}

// The metrics table of docs/operations.md: name -> type. A row may name several metrics
// (`a`, `b`) and show labels (`atx_x{l=…}`).
std::map<std::string, std::string> documented_metrics()
{
    std::ifstream in(std::string(ATX_SOURCE_DIR) + "/docs/operations.md");
    REQUIRE(in);
    std::map<std::string, std::string> out;
    std::string line;
    const std::regex row(R"(^\| (`atx_[^|]*) \| (counter|gauge|histogram) \|.*)");
    const std::regex name(R"(`(atx_[a-z_]+))");
    while (std::getline(in, line)) {
        std::smatch m;
        if (!std::regex_match(line, m, row))
            continue;
        const std::string cell = m[1], type = m[2];
        for (std::sregex_iterator it(cell.begin(), cell.end(), name), end; it != end; ++it)
            out[(*it)[1]] = type;
    }
    return out;
}

}  // namespace

TEST_CASE("the exposition checker finds what is wrong", "[metrics]")
{
    CHECK(parse_exposition("# TYPE a counter\na 1\n# TYPE b gauge\nb{x=\"1\"} -2.5e3\n").errors.empty());
    CHECK_FALSE(parse_exposition("a 1\n").errors.empty());                                         // no TYPE
    CHECK_FALSE(parse_exposition("# TYPE a counter\na 1").errors.empty());                         // no final newline
    CHECK_FALSE(parse_exposition("# TYPE a gauge\na{x=\"\\t\"} 1\n").errors.empty());              // bad escape
    CHECK_FALSE(parse_exposition("# TYPE a gauge\na{x=\"1\"} 1\na{x=\"1\"} 2\n").errors.empty());  // twice
    CHECK_FALSE(parse_exposition("# TYPE a gauge\na 1\n# TYPE b gauge\nb 1\na{y=\"2\"} 1\n").errors.empty());  // split
    CHECK_FALSE(parse_exposition("# TYPE a gauge\na 1,5\n").errors.empty());          // bad value
    CHECK_FALSE(parse_exposition("# TYPE a gauge\na{0x=\"1\"} 1\n").errors.empty());  // bad label name
    CHECK_FALSE(parse_exposition("# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\n"
                                 "h_sum 1\nh_count 1\n")
                    .errors.empty());  // not cumulative
    CHECK_FALSE(parse_exposition("# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n").errors.empty());
    CHECK(parse_exposition("# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 3\nh_count 2\n")
              .errors.empty());
}

TEST_CASE("Metrics::render: every documented metric, valid text format", "[metrics]")
{
    Metrics m;
    DbMetrics& app = m.db("app");
    // A name that needs every label escape.
    const std::string odd = "we\"ird\\db\nname";
    DbMetrics& weird = m.db(odd);
    app.applied = 41;
    app.applied += 1;
    app.dead_lettered = 3;
    app.lag_bytes = 123456789012LL;
    app.dead_letters = -1;
    app.last_applied_lsn = 0x16B3748;
    app.set_state(DbState::Streaming);
    app.set_wal_status("reserved");
    weird.set_state(DbState::Standby);
    for (double s : {0.0005, 0.003, 0.2, 20.0})
        app.apply_seconds.observe(s);
    m.state_size = [] { return uint64_t{1234}; };
    m.state_records = [] { return uint64_t{77}; };
    m.state_swept = [] { return uint64_t{5}; };

    const std::string text = m.render();
    const Exposition e = parse_exposition(text);
    INFO(text);
    INFO(joined(e.errors));
    CHECK(e.errors.empty());

    const auto documented = documented_metrics();
    REQUIRE(documented.size() >= 20);  // the table was found and read
    for (const auto& [name, type] : documented) {
        INFO(name);
        REQUIRE(e.types.count(name));
        CHECK(e.types.at(name) == type);
        CHECK(e.help.count(name));
    }
    // Nothing rendered that the document does not list either.
    for (const auto& [name, type] : e.types) {
        INFO(name << " is rendered but not listed in docs/operations.md");
        CHECK(documented.count(name));
    }

    const std::map<std::string, std::string> db_app = {{"database", "app"}};
    REQUIRE(e.find("atx_messages_applied_total", db_app));
    CHECK(e.find("atx_messages_applied_total", db_app)->value == 42);
    CHECK(e.find("atx_messages_dead_lettered_total", db_app)->value == 3);
    CHECK(e.find("atx_lag_bytes", db_app)->value == 123456789012.0);
    CHECK(e.find("atx_dead_letters", db_app)->value == -1);
    CHECK(e.find("atx_last_applied_lsn", db_app)->value == 0x16B3748);
    CHECK(e.find("atx_database_state", {{"database", "app"}, {"state", "streaming"}})->value == 1);
    CHECK(e.find("atx_database_state", {{"database", "app"}, {"state", "standby"}})->value == 0);
    CHECK(e.find("atx_slot_wal_status", {{"database", "app"}, {"wal_status", "reserved"}})->value == 1);
    CHECK(e.find("atx_slot_wal_status", {{"database", "app"}, {"wal_status", "lost"}})->value == 0);
    // The escaped database name comes back unchanged.
    REQUIRE(e.find("atx_database_state", {{"database", odd}, {"state", "standby"}}));
    CHECK(e.find("atx_database_state", {{"database", odd}, {"state", "standby"}})->value == 1);
    // Histogram: 0.0005 <= 0.001, 0.003 <= 0.005, 0.2 <= 0.25, 20 only in +Inf.
    CHECK(e.find("atx_apply_duration_seconds_bucket", {{"database", "app"}, {"le", "0.001"}})->value == 1);
    CHECK(e.find("atx_apply_duration_seconds_bucket", {{"database", "app"}, {"le", "0.0025"}})->value == 1);
    CHECK(e.find("atx_apply_duration_seconds_bucket", {{"database", "app"}, {"le", "0.005"}})->value == 2);
    CHECK(e.find("atx_apply_duration_seconds_bucket", {{"database", "app"}, {"le", "0.25"}})->value == 3);
    CHECK(e.find("atx_apply_duration_seconds_bucket", {{"database", "app"}, {"le", "10"}})->value == 3);
    CHECK(e.find("atx_apply_duration_seconds_bucket", {{"database", "app"}, {"le", "+Inf"}})->value == 4);
    CHECK(e.find("atx_apply_duration_seconds_count", db_app)->value == 4);
    CHECK(e.find("atx_apply_duration_seconds_sum", db_app)->value == Approx(20.2035));
    CHECK(e.find("atx_state_store_bytes")->value == 1234);
    CHECK(e.find("atx_state_store_records")->value == 77);
    CHECK(e.find("atx_state_store_swept_total")->value == 5);
    // Unix times keep their digits (not 1.8e+09).
    const Sample* start = e.find("atx_start_time_seconds");
    REQUIRE(start);
    CHECK(std::fabs(start->value - static_cast<double>(wall_now_us()) / 1e6) < 60);
}

TEST_CASE("Metrics::render with no database is still valid", "[metrics]")
{
    Metrics m;
    const Exposition e = parse_exposition(m.render());
    INFO(joined(e.errors));
    CHECK(e.errors.empty());
    CHECK(e.find("atx_state_store_bytes")->value == 0);
}
