// Saved SPI plans for applied statements; see plan_cache.h.
//
// A small LRU searched linearly by hash: the applier's working set is a handful of statements,
// and a miss costs a parse anyway. Plain C style (PostgreSQL calls only).
#include "plan_cache.h"

#include "statement_key.h"

extern "C" {
#include "common/hashfn.h"
#include "utils/plancache.h"
}

namespace {

constexpr int kEntries = 64;
constexpr Size kMaxPlanBytes = 1024 * 1024;
constexpr Size kMaxCacheBytes = 16 * 1024 * 1024;

struct Entry {
    bool used;
    StatementKey key;
    Oid role;
    char* settings;  // the carried settings, as settings_signature() writes them (TopMemoryContext)
    int settings_len;
    SPIPlanPtr plan;  // saved (SPI_keepplan)
    Size bytes;
    uint64 last_used;
};

Entry entries[kEntries];
uint64 clock_tick = 0;
Size cached_bytes = 0;
// > 0 while a cached plan executes. A nested apply (a statement calling atx.apply) must not evict
// the plan that is running below it, so nested calls bypass the cache.
int executing = 0;
// A plan whose first execution failed: freed at the next call, once the failed execution's
// resources are released (freeing it while the error unwinds would pull it from under them).
SPIPlanPtr orphan = NULL;

// Every setting the message carries, in its order, as one byte string: two messages share a plan
// only if theirs are equal byte for byte.
char* settings_signature(const AtxMessageC* m, int* len)
{
    StringInfoData s;
    initStringInfo(&s);
    for (int i = 0; i < m->nguc; i++) {
        appendBinaryStringInfo(&s, m->gucs[i].name, (int)strlen(m->gucs[i].name) + 1);
        appendBinaryStringInfo(&s, m->gucs[i].value, (int)strlen(m->gucs[i].value) + 1);
        appendStringInfoChar(&s, m->gucs[i].privileged ? 'p' : 'u');
    }
    *len = s.len;
    return s.data;
}

Size plan_bytes(SPIPlanPtr plan)
{
    Size n = 0;
    ListCell* lc;
    foreach (lc, SPI_plan_get_plan_sources(plan)) {
        CachedPlanSource* ps = (CachedPlanSource*)lfirst(lc);
        n += MemoryContextMemAllocated(ps->context, true);
        if (ps->gplan != NULL)
            n += MemoryContextMemAllocated(ps->gplan->context, true);
    }
    return n;
}

int execute_counted(SPIPlanPtr plan, ParamListInfo params, DestReceiver* dest)
{
    SPIExecuteOptions options;
    int rc = 0;

    memset(&options, 0, sizeof options);
    options.params = params;
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

Entry* lookup(const StatementKey* k, Oid role, const char* settings, int settings_len)
{
    for (int i = 0; i < kEntries; i++) {
        Entry* e = &entries[i];
        if (e->used && e->role == role && statement_key_equal(&e->key, k) && e->settings_len == settings_len &&
            memcmp(e->settings, settings, settings_len) == 0)
            return e;
    }
    return NULL;
}

void forget(Entry* e)
{
    SPI_freeplan(e->plan);
    statement_key_free(&e->key);
    pfree(e->settings);
    cached_bytes -= e->bytes;
    e->used = false;
}

// Room for bytes more: the least recently used plans go until the cache is under its bound and
// a slot is free. Returns that slot.
Entry* make_room(Size bytes)
{
    for (;;) {
        Entry* free_e = NULL;
        Entry* lru = NULL;
        for (int i = 0; i < kEntries; i++) {
            if (!entries[i].used) {
                free_e = free_e ? free_e : &entries[i];
                continue;
            }
            if (lru == NULL || entries[i].last_used < lru->last_used)
                lru = &entries[i];
        }
        if (free_e != NULL && cached_bytes + bytes <= kMaxCacheBytes)
            return free_e;
        if (lru == NULL)
            return free_e;
        forget(lru);
    }
}

}  // namespace

int atx_execute_cached(const AtxMessageC* m, Oid* types, ParamListInfo params, DestReceiver* dest,
                       const char** command_tag)
{
    StatementKey key;
    Entry* e;
    SPIPlanPtr plan;
    char* settings;
    int settings_len;
    int rc;

    if (orphan != NULL && executing == 0) {
        SPI_freeplan(orphan);
        orphan = NULL;
    }
    if (executing > 0) {
        plan = SPI_prepare(m->statement, m->nparams, types);  // freed with the SPI connection
        if (plan == NULL)
            return SPI_result;
        *command_tag = last_tag(plan);
        return execute_counted(plan, params, dest);
    }

    key = statement_key_probe(m->statement, m->nparams, types);
    settings = settings_signature(m, &settings_len);
    e = lookup(&key, m->role_oid, settings, settings_len);
    if (e != NULL) {
        e->last_used = ++clock_tick;
        *command_tag = last_tag(e->plan);
        return execute_counted(e->plan, params, dest);
    }

    // Prepared first: a statement that does not parse is never cached.
    plan = SPI_prepare(m->statement, m->nparams, types);
    if (plan == NULL)
        return SPI_result;
    if (SPI_keepplan(plan) != 0)
        elog(ERROR, "SPI_keepplan failed");
    *command_tag = last_tag(plan);
    PG_TRY();
    {
        rc = execute_counted(plan, params, dest);
    }
    PG_CATCH();
    {
        orphan = plan;
        PG_RE_THROW();
    }
    PG_END_TRY();
    // Kept only once it ran (its generic plan, if any, is counted) and only if it is small: a
    // statement of 200,000 VALUES rows holds tens of megabytes of trees.
    {
        Size bytes = plan_bytes(plan);
        if (bytes > kMaxPlanBytes) {
            SPI_freeplan(plan);
        } else {
            MemoryContext old;
            e = make_room(bytes);
            old = MemoryContextSwitchTo(TopMemoryContext);
            e->key = statement_key_store(&key);
            e->settings = (char*)palloc(settings_len + 1);
            memcpy(e->settings, settings, settings_len);
            MemoryContextSwitchTo(old);
            e->settings_len = settings_len;
            e->role = m->role_oid;
            e->plan = plan;
            e->bytes = bytes;
            e->used = true;
            e->last_used = ++clock_tick;
            cached_bytes += bytes;
        }
    }
    return rc;
}

int atx_execute_uncached(const char* sql, DestReceiver* dest, const char** command_tag)
{
    SPIPlanPtr plan = SPI_prepare(sql, 0, NULL);  // freed with the SPI connection
    if (plan == NULL)
        return SPI_result;
    *command_tag = last_tag(plan);
    return execute_counted(plan, NULL, dest);
}

Size atx_plan_cache_bytes(void) { return cached_bytes; }
