// The key of the backend's per-statement caches (plan_cache.cc, validate.cc): a statement's text
// and its parameter types, with a hash to compare cheaply first.
#pragma once

#include "pg_headers.h"

struct StatementKey {
    uint32 hash;
    int nargs;
    char* statement;  // borrowed in a probe; in TopMemoryContext once stored
    Oid* types;       // NULL when nargs == 0
};

// A probe over the caller's own strings: nothing is copied.
StatementKey statement_key_probe(const char* statement, int nargs, const Oid* types);
bool statement_key_equal(const StatementKey* a, const StatementKey* b);
// A copy of probe whose strings live in TopMemoryContext, for a cache entry.
StatementKey statement_key_store(const StatementKey* probe);
void statement_key_free(StatementKey* key);
