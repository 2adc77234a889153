// The versions atx-applier speaks. All of them come from CMakeLists.txt (project(VERSION) and
// ATX_EXTENSION_OLDEST), the one place a release changes them, as compile definitions.
//
// The applier drives an extension whose version (pg_extension.extversion) lies between
// kExtensionOldest and kExtensionNewest: an older extension lacks the apply functions this applier
// calls, and a newer one may have changed them. The other direction (an older applier against a
// newer extension) is refused by the extension's apply functions. The order of an upgrade is in
// docs/upgrade.md.
#pragma once

#include <string>

#if !defined(ATX_VERSION) || !defined(ATX_EXTENSION_VERSION) || !defined(ATX_EXTENSION_OLDEST)
#error "ATX_VERSION, ATX_EXTENSION_VERSION and ATX_EXTENSION_OLDEST are defined by CMakeLists.txt"
#endif

namespace atx::applier {

inline constexpr const char* kApplierVersion = ATX_VERSION;             // e.g. 0.3.0
inline constexpr const char* kExtensionNewest = ATX_EXTENSION_VERSION;  // e.g. 0.3
inline constexpr const char* kExtensionOldest = ATX_EXTENSION_OLDEST;

// Whether this applier can drive pg_atx at `extversion` (as pg_extension.extversion has it).
// Anything that is not a dotted list of numbers is not compatible.
bool extension_compatible(const std::string& extversion);

// For a database whose extension is outside the range: what is wrong ("extension pg_atx is at
// version 0.2 in database app; atx-applier 0.3.0 drives 0.3") and what to do about it.
std::string extension_incompatible_message(const std::string& extversion, const std::string& dbname);
std::string extension_incompatible_hint(const std::string& extversion);

}  // namespace atx::applier
