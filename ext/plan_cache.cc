// Saved SPI plans for applied statements; see plan_cache.h.
//
// A small LRU of at most kEntries plans, searched linearly by hash: the applier's working set is
// a handful of statements, and a miss costs a parse anyway. Plain C style (PostgreSQL calls only).
#include "plan_cache.h"

#include "statement_key.h"

extern "C" {
#include "nodes/params.h"
#include "utils/plancache.h"
}

namespace {

constexpr int kEntries = 64;

struct Entry {
    bool used;
    StatementKey key;
    SPIPlanPtr plan;  // saved (SPI_keepplan)
    uint64 last_used;
};

Entry entries[kEntries];
uint64 clock_tick = 0;
// > 0 while a cached plan executes. A nested apply (a statement calling atx.apply) must not evict
// the plan that is running below it, so nested calls bypass the cache.
int executing = 0;

int execute_counted(SPIPlanPtr plan, int nargs, const Oid* types, Datum* values, const char* nulls,
                    DestReceiver* dest)
{
    SPIExecuteOptions options;
    int rc = 0;

    memset(&options, 0, sizeof options);
    if (nargs > 0) {
        options.params = makeParamList(nargs);
        for (int i = 0; i < nargs; i++) {
            ParamExternData* prm = &options.params->params[i];
            prm->value = values[i];
            prm->isnull = nulls[i] == 'n';
            prm->pflags = PARAM_FLAG_CONST;
            prm->ptype = types[i];
        }
    }
    options.read_only = false;
    options.tcount = 0;
    options.dest = dest;
    executing++;
    PG_TRY();
    {
        rc = SPI_execute_plan_extended(plan, &options);
    }
    PG_FINALLY();
    {
        executing--;
    }
    PG_END_TRY();
    return rc;
}

const char* last_tag(SPIPlanPtr plan)
{
    List* sources = SPI_plan_get_plan_sources(plan);
    return sources != NIL ? GetCommandTagName(((CachedPlanSource*)llast(sources))->commandTag) : "EMPTY";
}

Entry* lookup(const StatementKey* k)
{
    for (int i = 0; i < kEntries; i++)
        if (entries[i].used && statement_key_equal(&entries[i].key, k))
            return &entries[i];
    return NULL;
}

// The slot to fill: a free one, else the least recently used (its plan is freed).
Entry* victim(void)
{
    Entry* lru = &entries[0];
    for (int i = 0; i < kEntries; i++) {
        if (!entries[i].used)
            return &entries[i];
        if (entries[i].last_used < lru->last_used)
            lru = &entries[i];
    }
    SPI_freeplan(lru->plan);
    statement_key_free(&lru->key);
    lru->used = false;
    return lru;
}

}  // namespace

int atx_execute_cached(const char* statement, int nargs, Oid* types, Datum* values, const char* nulls,
                       DestReceiver* dest, const char** command_tag)
{
    StatementKey key;
    Entry* e;

    if (executing > 0) {
        SPIPlanPtr plan = SPI_prepare(statement, nargs, types);  // freed with the SPI connection
        if (plan == NULL)
            return SPI_result;
        *command_tag = last_tag(plan);
        return execute_counted(plan, nargs, types, values, nulls, dest);
    }

    key = statement_key_probe(statement, nargs, types);
    e = lookup(&key);
    if (e == NULL) {
        // Prepare first: a statement that does not parse is never cached.
        SPIPlanPtr plan = SPI_prepare(statement, nargs, types);
        if (plan == NULL)
            return SPI_result;
        if (SPI_keepplan(plan) != 0)
            elog(ERROR, "SPI_keepplan failed");
        e = victim();
        e->key = statement_key_store(&key);
        e->plan = plan;
        e->used = true;
    }
    e->last_used = ++clock_tick;
    *command_tag = last_tag(e->plan);
    return execute_counted(e->plan, nargs, types, values, nulls, dest);
}
