// The replication origin "pg_atx" that tags every record atx_log writes.
//
// Its id is cached per backend; a syscache invalidation on
// pg_replication_origin (drop and re-create) clears the cache, so a stale id
// never tags a message that the output plugin would then filter away.
#include "atx_ext.h"
#include "message.h"

static RepOriginId cached_origin = InvalidRepOriginId;
static bool callback_registered = false;

static void origin_cache_reset(Datum arg, int cacheid, uint32 hashvalue) { cached_origin = InvalidRepOriginId; }

RepOriginId atx_emit_origin_id(bool missing_ok)
{
    if (!callback_registered) {
        CacheRegisterSyscacheCallback(REPLORIGNAME, origin_cache_reset, (Datum)0);
        CacheRegisterSyscacheCallback(REPLORIGIDENT, origin_cache_reset, (Datum)0);
        callback_registered = true;
    }
    if (cached_origin == InvalidRepOriginId) {
        RepOriginId id = replorigin_by_name(atx::kEmitOriginName, true);
        if (id == InvalidRepOriginId) {
            if (missing_ok)
                return InvalidRepOriginId;
            ereport(ERROR, (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
                            errmsg("replication origin \"%s\" does not exist", atx::kEmitOriginName),
                            errhint("CREATE EXTENSION pg_atx creates it; or run "
                                    "SELECT pg_replication_origin_create('%s') as a superuser.",
                                    atx::kEmitOriginName)));
        }
        cached_origin = id;
    }
    return cached_origin;
}

// pg_replication_origin_create() refuses names starting with "pg_" (reserved
// for the system); replorigin_create() does not. These two functions create
// the contract's origin names from C, and only those names.
static Datum ensure_origin(const char* name)
{
    if (RecoveryInProgress())
        ereport(ERROR, (errcode(ERRCODE_READ_ONLY_SQL_TRANSACTION),
                        errmsg("cannot create replication origin \"%s\" during recovery", name)));
    if (replorigin_by_name(name, true) == InvalidRepOriginId)
        (void)replorigin_create(name);
    PG_RETURN_TEXT_P(cstring_to_text(name));
}

static Datum ensure_emit_origin_body(FunctionCallInfo fcinfo) { return ensure_origin(atx::kEmitOriginName); }

static Datum ensure_apply_origin_body(FunctionCallInfo fcinfo)
{
    char name[NAMEDATALEN];
    snprintf(name, sizeof name, "pg_atx_apply_%u", MyDatabaseId);
    return ensure_origin(name);
}

#include "pg_guard.h"
ATX_ENTRY(atx_ensure_emit_origin, ensure_emit_origin_body)
ATX_ENTRY(atx_ensure_apply_origin, ensure_apply_origin_body)
