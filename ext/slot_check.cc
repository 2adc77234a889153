// Is there somewhere for a message to go? A message emitted while the database's
// pg_atx slot (atx.slot_name()) does not exist is never decoded (a slot only sees WAL written
// after it became consistent), so atx_log refuses instead of losing it.
// Scanning the slot array in shared memory is cheap: max_replication_slots
// entries under a shared lock.
#include "slot_check.h"

#include "pg_guard.h"

bool atx_have_slot_for_database(Oid dboid)
{
    bool found = false;
    char name[NAMEDATALEN];

    if (ReplicationSlotCtl == NULL || max_replication_slots <= 0)
        return false;
    // The applier's slot, by name: another pg_atx slot (a copy a REPLICATION role made for itself)
    // would accept messages the applier never sees.
    atx_slot_name(dboid, name);

    LWLockAcquire(ReplicationSlotControlLock, LW_SHARED);
    for (int i = 0; i < max_replication_slots && !found; i++) {
        ReplicationSlot* s = &ReplicationSlotCtl->replication_slots[i];
        bool ok;

        if (!s->in_use)
            continue;
        // Fields are read under the slot's spinlock, as pg_get_replication_slots does.
        SpinLockAcquire(&s->mutex);
        ok = s->data.database == dboid && strcmp(NameStr(s->data.name), name) == 0 &&
             strcmp(NameStr(s->data.plugin), "pg_atx") == 0 && s->data.persistency != RS_EPHEMERAL;
#if PG_VERSION_NUM >= 160000
        if (s->data.invalidated != RS_INVAL_NONE)
            ok = false;
#else
        // PostgreSQL 15 marks an invalidated slot by clearing restart_lsn.
        if (s->data.restart_lsn == InvalidXLogRecPtr && s->data.invalidated_at != InvalidXLogRecPtr)
            ok = false;
#endif
        SpinLockRelease(&s->mutex);
        found = ok;
    }
    LWLockRelease(ReplicationSlotControlLock);
    return found;
}

void atx_slot_name(Oid dboid, char* buf) { snprintf(buf, NAMEDATALEN, "pg_atx_%u", dboid); }

bool atx_slot_confirmed_flush(Oid dboid, XLogRecPtr* out)
{
    char name[NAMEDATALEN];
    bool found = false;

    atx_slot_name(dboid, name);
    if (ReplicationSlotCtl == NULL || max_replication_slots <= 0)
        return false;
    LWLockAcquire(ReplicationSlotControlLock, LW_SHARED);
    for (int i = 0; i < max_replication_slots && !found; i++) {
        ReplicationSlot* s = &ReplicationSlotCtl->replication_slots[i];
        if (!s->in_use)
            continue;
        SpinLockAcquire(&s->mutex);
        if (strcmp(NameStr(s->data.name), name) == 0 && s->data.database == dboid) {
            *out = s->data.confirmed_flush;
            found = true;
        }
        SpinLockRelease(&s->mutex);
    }
    LWLockRelease(ReplicationSlotControlLock);
    return found;
}

// atx.slot_name(): the one place that names a database's slot, for SQL and the applier.
static Datum slot_name_body(FunctionCallInfo fcinfo)
{
    char name[NAMEDATALEN];
    atx_slot_name(MyDatabaseId, name);
    PG_RETURN_DATUM(DirectFunctionCall1(namein, CStringGetDatum(name)));
}

ATX_ENTRY(atx_slot_name_sql, slot_name_body)
