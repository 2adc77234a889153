// The config file of atx-applier (--config), read for CLI11 by a reader of our own.
//
// Format (docs/operations.md, "Configuration"):
//   # comment                       ('#' or ';' at the start of a line)
//   name = value                    the long option name without "--"; the value is the rest of
//                                   the line, spaces and '#' included (conninfo strings have both)
//   name = "value"  / 'value'       quotes are removed; after a quoted value a '# comment' may follow
//   dbname = [app, "billing"]       a TOML-style list, for options that take several values
//   dbname = app                    ... or the name repeated, one value per line
// Booleans take true/false/on/off/yes/no/1/0.
//
// Why not CLI11's own TOML/INI reader: it splits an unquoted value at spaces and commas and cuts
// it at '#', which breaks `conninfo = host=/run/postgresql user=atx_app` and passwords with '#',
// and it silently ignores a repeated name unless the lines are adjacent. Files written for CLI11's
// TOML subset (quoted strings, arrays, booleans) read the same here; `[sections]` are refused.
#pragma once

#include <CLI/CLI.hpp>

#include <istream>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace atx::applier {

struct ConfigEntry {
    std::string name;
    std::vector<std::string> values;
    int line = 0;
};

// Parses the file text. `known` maps each accepted name to whether it may have several values;
// an unknown name, a single-value name set twice, a malformed line or a section throws
// CLI::ConfigError naming the line ("line 3: ..."). Entries of one name are merged, first line kept.
std::vector<ConfigEntry> parse_config_text(std::istream& in, const std::map<std::string, bool>& known);

// The option names a config file may set: every long option of `app` that is configurable
// (true when it takes several values). --config, --help and --version are not.
std::map<std::string, bool> configurable_names(const CLI::App& app);

// CLI11 formatter reading the format above (and writing it, for --help-config style dumps).
class ConfigFileFormat : public CLI::Config {
public:
    explicit ConfigFileFormat(std::map<std::string, bool> known) : known_(std::move(known)) {}
    std::vector<CLI::ConfigItem> from_config(std::istream& in) const override;
    std::string to_config(const CLI::App* app, bool default_also, bool write_description,
                          std::string prefix) const override;

private:
    std::map<std::string, bool> known_;
};

}  // namespace atx::applier
