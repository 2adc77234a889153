// The config file reader; the format and why it is ours are in config_file.h.
#include "config_file.h"

#include <sstream>

namespace atx::applier {

namespace {

std::string trim(const std::string& s)
{
    const char* ws = " \t\r\n";
    const size_t b = s.find_first_not_of(ws);
    if (b == std::string::npos)
        return "";
    return s.substr(b, s.find_last_not_of(ws) - b + 1);
}

[[noreturn]] void fail(int line, const std::string& what)
{
    throw CLI::ConfigError("line " + std::to_string(line) + ": " + what);
}

// A quoted string at s[pos] (pos at the opening quote). Double quotes take TOML's basic escapes
// (\" \\ \n \t); single quotes are literal. Returns the text; pos ends after the closing quote.
std::string quoted(const std::string& s, size_t& pos, int line)
{
    const char q = s[pos++];
    std::string out;
    while (pos < s.size() && s[pos] != q) {
        char c = s[pos++];
        if (q == '"' && c == '\\' && pos < s.size()) {
            const char e = s[pos++];
            c = e == 'n' ? '\n' : e == 't' ? '\t' : e;
        }
        out += c;
    }
    if (pos >= s.size())
        fail(line, "unterminated quoted value");
    ++pos;
    return out;
}

// Only a comment may follow a quoted value or a list.
void expect_end(const std::string& s, size_t pos, int line)
{
    const std::string rest = trim(s.substr(pos));
    if (!rest.empty() && rest[0] != '#')
        fail(line, "unexpected text after the value: '" + rest + "'");
}

std::vector<std::string> list_items(const std::string& text, int line)
{
    // text is "[ ... ]" possibly followed by a comment.
    std::vector<std::string> out;
    size_t pos = 1;
    for (;;) {
        while (pos < text.size() && (text[pos] == ' ' || text[pos] == '\t'))
            ++pos;
        if (pos >= text.size())
            fail(line, "unterminated list (missing ']')");
        if (text[pos] == ']') {
            expect_end(text, pos + 1, line);
            return out;
        }
        if (text[pos] == '"' || text[pos] == '\'') {
            out.push_back(quoted(text, pos, line));
        } else {
            const size_t end = text.find_first_of(",]", pos);
            if (end == std::string::npos)
                fail(line, "unterminated list (missing ']')");
            const std::string item = trim(text.substr(pos, end - pos));
            if (!item.empty())
                out.push_back(item);
            pos = end;
        }
        while (pos < text.size() && (text[pos] == ' ' || text[pos] == '\t'))
            ++pos;
        if (pos < text.size() && text[pos] == ',')
            ++pos;
        else if (pos < text.size() && text[pos] != ']')
            fail(line, "expected ',' or ']' in the list");
    }
}

}  // namespace

std::vector<ConfigEntry> parse_config_text(std::istream& in, const std::map<std::string, bool>& known)
{
    std::vector<ConfigEntry> entries;
    std::map<std::string, size_t> index;
    std::string raw;
    int lineno = 0;
    while (std::getline(in, raw)) {
        const int line = ++lineno;
        std::string t = trim(raw);
        if (t.empty() || t[0] == '#' || t[0] == ';')
            continue;
        if (t[0] == '[')
            fail(line, "sections are not supported: '" + t + "' (write name = value lines)");
        const size_t eq = t.find('=');
        if (eq == std::string::npos)
            fail(line, "expected 'name = value'");
        const std::string name = trim(t.substr(0, eq));
        std::string value = trim(t.substr(eq + 1));
        const auto k = known.find(name);
        if (k == known.end())
            fail(line, "unknown setting '" + name + "'");
        std::vector<std::string> values;
        if (!value.empty() && value[0] == '[') {
            // A TOML list may span lines until its ']'.
            while (value.find(']') == std::string::npos && std::getline(in, raw)) {
                ++lineno;
                value += " " + trim(raw);
            }
            values = list_items(value, line);
            if (!k->second)
                fail(line, "'" + name + "' takes one value, not a list");
        } else if (!value.empty() && (value[0] == '"' || value[0] == '\'')) {
            size_t pos = 0;
            values.push_back(quoted(value, pos, line));
            expect_end(value, pos, line);
        } else {
            values.push_back(value);
        }
        if (auto it = index.find(name); it != index.end()) {
            if (!k->second)
                fail(line, "'" + name + "' set twice (first on line " + std::to_string(entries[it->second].line) + ")");
            auto& v = entries[it->second].values;
            v.insert(v.end(), values.begin(), values.end());
            continue;
        }
        index[name] = entries.size();
        entries.push_back({name, std::move(values), line});
    }
    return entries;
}

std::map<std::string, bool> configurable_names(const CLI::App& app)
{
    std::map<std::string, bool> names;
    for (const CLI::Option* o : app.get_options()) {
        if (!o->get_configurable() || o->get_lnames().empty() || o == app.get_config_ptr() || o == app.get_help_ptr() ||
            o == app.get_version_ptr())
            continue;
        names[o->get_lnames().front()] = o->get_items_expected_max() > 1;
    }
    return names;
}

std::vector<CLI::ConfigItem> ConfigFileFormat::from_config(std::istream& in) const
{
    std::vector<CLI::ConfigItem> items;
    for (auto& e : parse_config_text(in, known_)) {
        CLI::ConfigItem item;
        item.name = e.name;
        item.inputs = std::move(e.values);
        items.push_back(std::move(item));
    }
    return items;
}

std::string ConfigFileFormat::to_config(const CLI::App* app, bool default_also, bool, std::string) const
{
    std::ostringstream out;
    for (const CLI::Option* o : app->get_options()) {
        if (o->get_lnames().empty() || !known_.count(o->get_lnames().front()))
            continue;
        std::vector<std::string> values = o->results();
        if (values.empty() && default_also && !o->get_default_str().empty())
            values = {o->get_default_str()};
        for (const auto& v : values)
            out << o->get_lnames().front() << " = " << v << "\n";
    }
    return out.str();
}

}  // namespace atx::applier
