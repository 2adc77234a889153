// The extension versions atx-applier drives (applier/version.h).
#include <catch2/catch.hpp>

#include "version.h"

using namespace atx::applier;

TEST_CASE("the applier drives the extension version of its own release")
{
    CHECK(extension_compatible(kExtensionNewest));
    CHECK(extension_compatible(kExtensionOldest));
    CHECK(extension_compatible(std::string(kExtensionNewest) + ".0"));
    // The release's own numbers, from the one definition.
    CHECK(std::string(kApplierVersion).rfind(std::string(kExtensionNewest) + ".", 0) == 0);
}

TEST_CASE("older and newer extensions and nonsense are refused, with what to do")
{
    for (const char* v : {"0.1", "0.2", "0.2.9", "99.0", "1000", "", "0.3beta", "0..3", ".3", "0.3.", "x", "-0.3"}) {
        INFO(v);
        CHECK_FALSE(extension_compatible(v));
    }
    const std::string old_msg = extension_incompatible_message("0.2", "app");
    CHECK(old_msg.find("version 0.2 in database app") != std::string::npos);
    CHECK(old_msg.find(std::string("atx-applier ") + kApplierVersion) != std::string::npos);
    CHECK(extension_incompatible_hint("0.2").find("ALTER EXTENSION pg_atx UPDATE") != std::string::npos);
    CHECK(extension_incompatible_hint("99.0").find("Install the atx-applier that comes with pg_atx 99.0") !=
          std::string::npos);
}
