// See statement_key.h. Plain C style (PostgreSQL calls only).
#include "statement_key.h"

extern "C" {
#include "common/hashfn.h"
}

StatementKey statement_key_probe(const char* statement, int nargs, const Oid* types)
{
    StatementKey k;
    k.hash = hash_bytes((const unsigned char*)statement, (int)strlen(statement));
    if (nargs > 0)
        k.hash = hash_combine(k.hash, hash_bytes((const unsigned char*)types, (int)(sizeof(Oid) * nargs)));
    k.nargs = nargs;
    k.statement = (char*)statement;
    k.types = nargs > 0 ? (Oid*)types : NULL;
    return k;
}

bool statement_key_equal(const StatementKey* a, const StatementKey* b)
{
    return a->hash == b->hash && a->nargs == b->nargs && strcmp(a->statement, b->statement) == 0 &&
           (a->nargs == 0 || memcmp(a->types, b->types, sizeof(Oid) * a->nargs) == 0);
}

StatementKey statement_key_store(const StatementKey* probe)
{
    StatementKey k = *probe;
    MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);
    k.statement = pstrdup(probe->statement);
    if (probe->nargs > 0) {
        k.types = (Oid*)palloc(sizeof(Oid) * probe->nargs);
        memcpy(k.types, probe->types, sizeof(Oid) * probe->nargs);
    }
    MemoryContextSwitchTo(old);
    return k;
}

void statement_key_free(StatementKey* key)
{
    pfree(key->statement);
    if (key->types)
        pfree(key->types);
    key->statement = NULL;
    key->types = NULL;
}
