// The extension versions this applier drives; see version.h.
#include "version.h"

#include <vector>

namespace atx::applier {

namespace {

// "0.3" -> {0, 3}; empty when any component is not a number.
std::vector<long> parse(const std::string& v)
{
    std::vector<long> out;
    size_t start = 0;
    while (start <= v.size()) {
        const size_t dot = v.find('.', start);
        const std::string part = v.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
        if (part.empty() || part.size() > 9 || part.find_first_not_of("0123456789") != std::string::npos)
            return {};
        out.push_back(std::stol(part));
        if (dot == std::string::npos)
            break;
        start = dot + 1;
    }
    return out;
}

// -1, 0, 1; a missing component counts as 0 (0.3 == 0.3.0).
int compare(const std::vector<long>& a, const std::vector<long>& b)
{
    for (size_t i = 0; i < a.size() || i < b.size(); ++i) {
        const long x = i < a.size() ? a[i] : 0, y = i < b.size() ? b[i] : 0;
        if (x != y)
            return x < y ? -1 : 1;
    }
    return 0;
}

std::string range()
{
    const std::string oldest = kExtensionOldest, newest = kExtensionNewest;
    return oldest == newest ? oldest : oldest + " to " + newest;
}

}  // namespace

bool extension_compatible(const std::string& extversion)
{
    const auto v = parse(extversion);
    return !v.empty() && compare(v, parse(kExtensionOldest)) >= 0 && compare(v, parse(kExtensionNewest)) <= 0;
}

std::string extension_incompatible_message(const std::string& extversion, const std::string& dbname)
{
    return "extension pg_atx is at version " + extversion + " in database " + dbname + "; atx-applier " +
           kApplierVersion + " drives pg_atx " + range();
}

std::string extension_incompatible_hint(const std::string& extversion)
{
    const auto v = parse(extversion);
    if (!v.empty() && compare(v, parse(kExtensionOldest)) < 0)
        return std::string("Update the extension: ALTER EXTENSION pg_atx UPDATE in this database (the server "
                           "must have the pg_atx ") +
               kExtensionNewest + " package installed); see docs/upgrade.md for the order.";
    return std::string("Install the atx-applier that comes with pg_atx ") + extversion +
           " (an applier is upgraded after the extension, never before); see docs/upgrade.md.";
}

}  // namespace atx::applier
