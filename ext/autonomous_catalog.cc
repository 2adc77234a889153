// atx.make_autonomous / atx.make_ordinary and the event triggers that keep an autonomous routine
// and its body in step (see autonomous.h; docs/design.md "Autonomous routines").
//
// Both halves are written with ProcedureCreate, the function CREATE [OR REPLACE] FUNCTION itself
// ends in: the body is a faithful copy of the routine (language, source, SQL-standard body,
// modes, names, defaults, settings, SECURITY DEFINER, owner), and the routine is replaced in
// place (OID, owner, grants, comment, dependants such as triggers unchanged) by the C stub.
// The catalog work runs as the bootstrap superuser with check_function_bodies off (creating a C
// function needs that; the body was validated when its owner created it), after the caller's
// own right was checked: the routine's owner or a superuser, nobody else.
//
// Plain C style (see pg_guard.h).
#include "autonomous.h"

#include "pg_guard.h"

extern "C" {
#include "access/genam.h"
#include "access/heapam.h"
#include "access/table.h"
#include "access/tableam.h"
#include "catalog/dependency.h"
#include "catalog/indexing.h"
#include "catalog/namespace.h"
#include "catalog/pg_depend.h"
#include "catalog/pg_language.h"
#include "catalog/pg_namespace.h"
#include "catalog/pg_proc.h"
#include "commands/event_trigger.h"
#include "common/hashfn.h"
#include "nodes/makefuncs.h"
#include "storage/lmgr.h"
#include "utils/fmgroids.h"
#include "utils/regproc.h"
#include "utils/rel.h"
}

// --- naming and finding the body ------------------------------------------------------------

char* atx_autonomous_body_name(const char* nspname, const char* name)
{
    char* full = psprintf("%s.%s", nspname, name);
    int len = (int)strlen(full);
    uint64 h;
    int keep;

    if (len < NAMEDATALEN)
        return full;
    h = hash_bytes_extended((const unsigned char*)full, len, 0);
    keep = pg_mbcliplen(full, len, NAMEDATALEN - 1 - 17);
    return psprintf("%.*s#%016llx", keep, full, (unsigned long long)h);
}

static Oid body_namespace(bool missing_ok) { return get_namespace_oid(ATX_AUTONOMOUS_SCHEMA, missing_ok); }

bool atx_autonomous_is_stub(HeapTuple routine)
{
    Form_pg_proc p = (Form_pg_proc)GETSTRUCT(routine);
    bool isnull;
    Datum src;

    if (p->prolang != ClanguageId)
        return false;
    src = SysCacheGetAttr(PROCOID, routine, Anum_pg_proc_prosrc, &isnull);
    return !isnull && strcmp(TextDatumGetCString(src), ATX_AUTONOMOUS_SYMBOL) == 0;
}

// The routine's dependent (DEPENDENCY_AUTO) in atx_autonomous.
static Oid linked_body(Oid routine, Oid nsp)
{
    Relation rel = table_open(DependRelationId, AccessShareLock);
    ScanKeyData key[2];
    SysScanDesc scan;
    HeapTuple tup;
    Oid found = InvalidOid;

    ScanKeyInit(&key[0], Anum_pg_depend_refclassid, BTEqualStrategyNumber, F_OIDEQ,
                ObjectIdGetDatum(ProcedureRelationId));
    ScanKeyInit(&key[1], Anum_pg_depend_refobjid, BTEqualStrategyNumber, F_OIDEQ, ObjectIdGetDatum(routine));
    scan = systable_beginscan(rel, DependReferenceIndexId, true, NULL, 2, key);
    while (HeapTupleIsValid(tup = systable_getnext(scan))) {
        Form_pg_depend d = (Form_pg_depend)GETSTRUCT(tup);
        if (d->classid == ProcedureRelationId && d->deptype == DEPENDENCY_AUTO && get_func_namespace(d->objid) == nsp) {
            found = d->objid;
            break;
        }
    }
    systable_endscan(scan);
    table_close(rel, AccessShareLock);
    return found;
}

// The routine a body depends on (DEPENDENCY_AUTO), InvalidOid when not linked.
static Oid linked_routine(Oid body)
{
    Relation rel = table_open(DependRelationId, AccessShareLock);
    ScanKeyData key[2];
    SysScanDesc scan;
    HeapTuple tup;
    Oid found = InvalidOid;

    ScanKeyInit(&key[0], Anum_pg_depend_classid, BTEqualStrategyNumber, F_OIDEQ, ObjectIdGetDatum(ProcedureRelationId));
    ScanKeyInit(&key[1], Anum_pg_depend_objid, BTEqualStrategyNumber, F_OIDEQ, ObjectIdGetDatum(body));
    scan = systable_beginscan(rel, DependDependerIndexId, true, NULL, 2, key);
    while (HeapTupleIsValid(tup = systable_getnext(scan))) {
        Form_pg_depend d = (Form_pg_depend)GETSTRUCT(tup);
        if (d->refclassid == ProcedureRelationId && d->deptype == DEPENDENCY_AUTO) {
            found = d->refobjid;
            break;
        }
    }
    systable_endscan(scan);
    table_close(rel, AccessShareLock);
    return found;
}

static Oid body_by_name(HeapTuple routine, Oid nsp)
{
    Form_pg_proc p = (Form_pg_proc)GETSTRUCT(routine);
    char* name = atx_autonomous_body_name(get_namespace_name(p->pronamespace), NameStr(p->proname));
    return GetSysCacheOid3(PROCNAMEARGSNSP, Anum_pg_proc_oid, CStringGetDatum(name), PointerGetDatum(&p->proargtypes),
                           ObjectIdGetDatum(nsp));
}

Oid atx_autonomous_find_body(HeapTuple routine)
{
    Oid nsp = body_namespace(true);
    Oid body;

    if (!OidIsValid(nsp))
        return InvalidOid;
    body = body_by_name(routine, nsp);
    return OidIsValid(body) ? body : linked_body(((Form_pg_proc)GETSTRUCT(routine))->oid, nsp);
}

// --- a routine's definition, as ProcedureCreate takes it ------------------------------------------

struct ProcDef {
    char prokind;
    bool retset;
    Oid rettype;
    Oid lang;
    bool secdef, leakproof, strict;
    char volatility, parallel;
    Oid prosupport;
    float4 procost, prorows;
    oidvector* argtypes;
    char* prosrc;
    char* probin;       // NULL: none
    Node* sqlbody;      // NULL: none
    Datum allargtypes;  // (Datum) 0: NULL
    Datum argmodes;
    Datum argnames;
    Datum proconfig;
    List* defaults;
};

static Datum nullable_attr(HeapTuple tup, int attnum)
{
    bool isnull;
    Datum d = SysCacheGetAttr(PROCOID, tup, attnum, &isnull);
    return isnull ? (Datum)0 : d;
}

// An array column as ProcedureCreate reads it: a plain (4-byte header, detoasted) copy.
static Datum nullable_array(HeapTuple tup, int attnum)
{
    Datum d = nullable_attr(tup, attnum);
    return d ? PointerGetDatum(DatumGetArrayTypePCopy(d)) : (Datum)0;
}

static void read_def(HeapTuple tup, ProcDef* d)
{
    Form_pg_proc p = (Form_pg_proc)GETSTRUCT(tup);
    Datum v;

    d->prokind = p->prokind;
    d->retset = p->proretset;
    d->rettype = p->prorettype;
    d->lang = p->prolang;
    d->secdef = p->prosecdef;
    d->leakproof = p->proleakproof;
    d->strict = p->proisstrict;
    d->volatility = p->provolatile;
    d->parallel = p->proparallel;
    d->prosupport = p->prosupport;
    d->procost = p->procost;
    d->prorows = p->prorows;
    d->argtypes = (oidvector*)palloc(VARSIZE(&p->proargtypes));
    memcpy(d->argtypes, &p->proargtypes, VARSIZE(&p->proargtypes));
    v = nullable_attr(tup, Anum_pg_proc_prosrc);
    d->prosrc = v ? TextDatumGetCString(v) : pstrdup("");
    v = nullable_attr(tup, Anum_pg_proc_probin);
    d->probin = v ? TextDatumGetCString(v) : NULL;
    v = nullable_attr(tup, Anum_pg_proc_prosqlbody);
    d->sqlbody = v ? (Node*)stringToNode(TextDatumGetCString(v)) : NULL;
    d->allargtypes = nullable_array(tup, Anum_pg_proc_proallargtypes);
    d->argmodes = nullable_array(tup, Anum_pg_proc_proargmodes);
    d->argnames = nullable_array(tup, Anum_pg_proc_proargnames);
    d->proconfig = nullable_array(tup, Anum_pg_proc_proconfig);
    v = nullable_attr(tup, Anum_pg_proc_proargdefaults);
    d->defaults = v ? castNode(List, stringToNode(TextDatumGetCString(v))) : NIL;
}

static Oid write_def(const ProcDef* d, const char* name, Oid nsp, Oid owner)
{
    HeapTuple lt = SearchSysCache1(LANGOID, ObjectIdGetDatum(d->lang));
    Oid validator;
    ObjectAddress a;
    Datum none = PointerGetDatum(NULL);

    if (!HeapTupleIsValid(lt))
        elog(ERROR, "cache lookup failed for language %u", d->lang);
    validator = ((Form_pg_language)GETSTRUCT(lt))->lanvalidator;
    ReleaseSysCache(lt);
    a = ProcedureCreate(name, nsp, true, d->retset, d->rettype, owner, d->lang, validator, d->prosrc, d->probin,
                        d->sqlbody, d->prokind, d->secdef, d->leakproof, d->strict, d->volatility, d->parallel,
                        d->argtypes, d->allargtypes ? d->allargtypes : none, d->argmodes ? d->argmodes : none,
                        d->argnames ? d->argnames : none, d->defaults, none,
#if PG_VERSION_NUM >= 180000
                        NIL,
#endif
                        d->proconfig ? d->proconfig : none, d->prosupport, d->procost, d->prorows);
    CommandCounterIncrement();
    return a.objectId;
}

// --- privileged catalog work --------------------------------------------------------------------

struct Privileged {
    Oid user;
    int sec;
    int nest;
};

static void privileged_begin(Privileged* p)
{
    GetUserIdAndSecContext(&p->user, &p->sec);
    SetUserIdAndSecContext(BOOTSTRAP_SUPERUSERID, p->sec | SECURITY_LOCAL_USERID_CHANGE);
    p->nest = NewGUCNestLevel();
    (void)set_config_option("check_function_bodies", "off", PGC_SUSET, PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
}

static void privileged_end(Privileged* p)
{
    AtEOXact_GUC(true, p->nest);
    SetUserIdAndSecContext(p->user, p->sec);
}

static bool owns(Oid owner) { return superuser() || has_privs_of_role(GetUserId(), owner); }

static ObjectType object_type_of(char prokind)
{
    return prokind == PROKIND_PROCEDURE ? OBJECT_PROCEDURE : OBJECT_FUNCTION;
}

// The body follows the routine in everything its owner may ALTER: owner, SECURITY DEFINER,
// settings, strictness, leakproofness, cost, rows, its name (a renamed routine's body is renamed
// with it), and grants: the routine's when it runs as its caller, its owner's alone when it is
// SECURITY DEFINER. Volatility and parallel safety stay the body's: the stub is always
// VOLATILE PARALLEL UNSAFE (it writes WAL and waits; a folded or parallel call would be wrong).
static void sync_body(HeapTuple routine, Oid body)
{
    Form_pg_proc r = (Form_pg_proc)GETSTRUCT(routine);
    Relation rel = table_open(ProcedureRelationId, RowExclusiveLock);
    HeapTuple old = SearchSysCacheCopy1(PROCOID, ObjectIdGetDatum(body));
    Form_pg_proc b;
    Datum values[Natts_pg_proc];
    bool nulls[Natts_pg_proc], repl[Natts_pg_proc];
    bool isnull;
    Datum acl, oldacl;
    Oid *oldm = NULL, *newm = NULL;
    int nold = 0, nnew = 0;
    Oid oldowner;
    char* want;
    HeapTuple tup;
    NameData n;

    if (!HeapTupleIsValid(old))
        elog(ERROR, "cache lookup failed for function %u", body);
    b = (Form_pg_proc)GETSTRUCT(old);
    oldowner = b->proowner;
    memset(nulls, 0, sizeof nulls);
    memset(repl, 0, sizeof repl);
    want = atx_autonomous_body_name(get_namespace_name(r->pronamespace), NameStr(r->proname));
    if (strcmp(want, NameStr(b->proname)) != 0) {
        if (OidIsValid(GetSysCacheOid3(PROCNAMEARGSNSP, Anum_pg_proc_oid, CStringGetDatum(want),
                                       PointerGetDatum(&b->proargtypes), ObjectIdGetDatum(b->pronamespace))))
            ereport(ERROR, (errcode(ERRCODE_DUPLICATE_FUNCTION),
                            errmsg("the body of autonomous routine %s cannot be renamed: %s.%s exists",
                                   format_procedure(r->oid), ATX_AUTONOMOUS_SCHEMA, quote_identifier(want))));
        namestrcpy(&n, want);
        values[Anum_pg_proc_proname - 1] = NameGetDatum(&n);
        repl[Anum_pg_proc_proname - 1] = true;
    }
    values[Anum_pg_proc_proowner - 1] = ObjectIdGetDatum(r->proowner);
    values[Anum_pg_proc_prosecdef - 1] = BoolGetDatum(r->prosecdef);
    values[Anum_pg_proc_proleakproof - 1] = BoolGetDatum(r->proleakproof);
    values[Anum_pg_proc_proisstrict - 1] = BoolGetDatum(r->proisstrict);
    values[Anum_pg_proc_procost - 1] = Float4GetDatum(r->procost);
    values[Anum_pg_proc_prorows - 1] = Float4GetDatum(r->prorows);
    for (int att : {Anum_pg_proc_proowner, Anum_pg_proc_prosecdef, Anum_pg_proc_proleakproof, Anum_pg_proc_proisstrict,
                    Anum_pg_proc_proconfig, Anum_pg_proc_proacl})
        repl[att - 1] = true;
    // A procedure has no cost to ALTER; its stub's is C's default (write_stub).
    repl[Anum_pg_proc_procost - 1] = repl[Anum_pg_proc_prorows - 1] = r->prokind != PROKIND_PROCEDURE;
    values[Anum_pg_proc_proconfig - 1] = SysCacheGetAttr(PROCOID, routine, Anum_pg_proc_proconfig, &isnull);
    nulls[Anum_pg_proc_proconfig - 1] = isnull;
    if (r->prosecdef) {
        // Run as the owner (the stub runs as it), so only the owner needs it: a caller must not
        // run the owner's code outside the autonomous transaction (rolled back with its own).
        AclItem item;
        item.ai_grantee = r->proowner;
        item.ai_grantor = r->proowner;
        ACLITEM_SET_PRIVS_GOPTIONS(item, ACL_EXECUTE, ACL_NO_RIGHTS);
        acl = PointerGetDatum(aclupdate(make_empty_acl(), &item, ACL_MODECHG_ADD, r->proowner, DROP_RESTRICT));
        isnull = false;
    } else {
        // Run as the caller, who needs the routine's EXECUTE on it too.
        acl = SysCacheGetAttr(PROCOID, routine, Anum_pg_proc_proacl, &isnull);
    }
    values[Anum_pg_proc_proacl - 1] = acl;
    nulls[Anum_pg_proc_proacl - 1] = isnull;
    if (!isnull)
        nnew = aclmembers(DatumGetAclP(acl), &newm);
    oldacl = SysCacheGetAttr(PROCOID, old, Anum_pg_proc_proacl, &isnull);
    if (!isnull)
        nold = aclmembers(DatumGetAclP(oldacl), &oldm);

    tup = heap_modify_tuple(old, RelationGetDescr(rel), values, nulls, repl);
    CatalogTupleUpdate(rel, &tup->t_self, tup);
    if (oldowner != r->proowner)
        changeDependencyOnOwner(ProcedureRelationId, body, r->proowner);
    updateAclDependencies(ProcedureRelationId, body, 0, r->proowner, nold, oldm, nnew, newm);
    table_close(rel, RowExclusiveLock);
    CommandCounterIncrement();
}

// body depends on routine (DEPENDENCY_AUTO): DROP of the routine drops its body, and pg_dump
// still dumps the body (it leaves out internal dependants).
static void link_body(Oid body, Oid routine)
{
    ObjectAddress b, r;
    ObjectAddressSet(b, ProcedureRelationId, body);
    ObjectAddressSet(r, ProcedureRelationId, routine);
    (void)deleteDependencyRecordsForSpecific(ProcedureRelationId, body, DEPENDENCY_AUTO, ProcedureRelationId, routine);
    recordDependencyOn(&b, &r, DEPENDENCY_AUTO);
    CommandCounterIncrement();
}

// Replaces routine, in place, by the stub; returns whether its volatility or parallel safety
// changed.
static bool write_stub(HeapTuple routine, const char* probin)
{
    Form_pg_proc p = (Form_pg_proc)GETSTRUCT(routine);
    ProcDef d;
    bool changed = p->provolatile != PROVOLATILE_VOLATILE || p->proparallel != PROPARALLEL_UNSAFE;

    read_def(routine, &d);
    d.lang = ClanguageId;
    d.prosrc = pstrdup(ATX_AUTONOMOUS_SYMBOL);
    d.probin = pstrdup(probin);
    d.sqlbody = NULL;
    d.volatility = PROVOLATILE_VOLATILE;
    d.parallel = PROPARALLEL_UNSAFE;
    d.prosupport = InvalidOid;  // a planner support function could simplify the call away
    // pg_dump writes COST when it differs from the language's default (C: 1), and CREATE
    // PROCEDURE refuses COST: a procedure's stub must have C's.
    if (d.prokind == PROKIND_PROCEDURE)
        d.procost = 1;
    (void)write_def(&d, NameStr(p->proname), p->pronamespace, p->proowner);
    return changed;
}

// Moves routine's current definition into its body (created, or replaced when body is valid)
// and the stub into routine. Runs privileged.
static Oid wrap(HeapTuple routine, Oid body, const char* probin, bool* changed)
{
    Form_pg_proc p = (Form_pg_proc)GETSTRUCT(routine);
    Oid nsp = body_namespace(false);
    char* name = atx_autonomous_body_name(get_namespace_name(p->pronamespace), NameStr(p->proname));
    ProcDef d;
    HeapTuple fresh;

    if (OidIsValid(body)) {
        // Replaced in place under the name it has now; sync_body renames it if needed.
        HeapTuple bt = SearchSysCache1(PROCOID, ObjectIdGetDatum(body));
        if (!HeapTupleIsValid(bt))
            elog(ERROR, "cache lookup failed for function %u", body);
        name = pstrdup(NameStr(((Form_pg_proc)GETSTRUCT(bt))->proname));
        // ProcedureCreate lets only the body's owner replace it: the routine's owner.
        if (((Form_pg_proc)GETSTRUCT(bt))->proowner != p->proowner) {
            ReleaseSysCache(bt);
            sync_body(routine, body);
        } else {
            ReleaseSysCache(bt);
        }
    } else {
        Oid stale = GetSysCacheOid3(PROCNAMEARGSNSP, Anum_pg_proc_oid, CStringGetDatum(name),
                                    PointerGetDatum(&p->proargtypes), ObjectIdGetDatum(nsp));
        if (OidIsValid(stale)) {
            // A body left by a routine of this name that is gone or ordinary: not this one's.
            ObjectAddress a;
            ObjectAddressSet(a, ProcedureRelationId, stale);
            performDeletion(&a, DROP_RESTRICT, PERFORM_DELETION_INTERNAL);
            CommandCounterIncrement();
        }
    }
    read_def(routine, &d);
    body = write_def(&d, name, nsp, p->proowner);
    sync_body(routine, body);
    link_body(body, p->oid);
    fresh = SearchSysCacheCopy1(PROCOID, ObjectIdGetDatum(p->oid));
    *changed = write_stub(fresh, probin);
    return body;
}

// Refuses what cannot be made autonomous, with why.
static void check_can_wrap(HeapTuple routine, Oid body_nsp)
{
    Form_pg_proc p = (Form_pg_proc)GETSTRUCT(routine);
    const char* what = format_procedure(p->oid);
    bool isnull;

    if (p->prokind == PROKIND_AGGREGATE || p->prokind == PROKIND_WINDOW)
        ereport(ERROR, (errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
                        errmsg("%s cannot be made autonomous: it is an aggregate or window function", what)));
    if (p->prolang == ClanguageId || p->prolang == INTERNALlanguageId)
        ereport(ERROR, (errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
                        errmsg("%s cannot be made autonomous: it is written in C", what),
                        errhint("Write a routine in SQL or a procedural language that calls it, and make that one "
                                "autonomous.")));
    if (p->pronamespace == body_nsp || p->pronamespace == PG_CATALOG_NAMESPACE ||
        p->pronamespace == get_namespace_oid("atx", true) || p->pronamespace == PG_TOAST_NAMESPACE)
        ereport(ERROR, (errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
                        errmsg("%s cannot be made autonomous: it belongs to the system or to pg_atx", what)));
    if (OidIsValid(getExtensionOfObject(ProcedureRelationId, p->oid)))
        ereport(ERROR, (errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
                        errmsg("%s cannot be made autonomous: it belongs to an extension", what),
                        errdetail("The extension's scripts would replace it again.")));
    if (p->prorettype == EVENT_TRIGGEROID || p->prorettype == TRIGGEROID || p->prorettype == INTERNALOID)
        ereport(ERROR, (errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
                        errmsg("%s cannot be made autonomous: it returns %s", what, format_type_be(p->prorettype)),
                        p->prorettype == TRIGGEROID
                            ? errhint("Make a procedure of the trigger's body that takes what it uses (NEW, OLD, "
                                      "TG_OP) as arguments, make that autonomous, and call it from the trigger "
                                      "function.")
                            : 0));
    for (int i = 0; i < p->pronargs; i++)
        if (p->proargtypes.values[i] == ANYOID || p->proargtypes.values[i] == INTERNALOID)
            ereport(ERROR, (errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
                            errmsg("%s cannot be made autonomous: it takes an argument of type %s", what,
                                   format_type_be(p->proargtypes.values[i]))));
    (void)SysCacheGetAttr(PROCOID, routine, Anum_pg_proc_protrftypes, &isnull);
    if (!isnull)
        ereport(ERROR, (errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
                        errmsg("%s cannot be made autonomous: it uses TRANSFORM", what)));
}

static char* own_probin(FunctionCallInfo fcinfo)
{
    HeapTuple t = SearchSysCache1(PROCOID, ObjectIdGetDatum(fcinfo->flinfo->fn_oid));
    bool isnull;
    Datum v;
    char* s;

    if (!HeapTupleIsValid(t))
        elog(ERROR, "cache lookup failed for function %u", fcinfo->flinfo->fn_oid);
    v = SysCacheGetAttr(PROCOID, t, Anum_pg_proc_probin, &isnull);
    s = isnull ? pstrdup("$libdir/pg_atx") : TextDatumGetCString(v);
    ReleaseSysCache(t);
    return s;
}

static HeapTuple routine_owned_by_caller(Oid routine)
{
    HeapTuple tup = SearchSysCacheCopy1(PROCOID, ObjectIdGetDatum(routine));
    Form_pg_proc p;

    if (!HeapTupleIsValid(tup))
        ereport(ERROR, (errcode(ERRCODE_UNDEFINED_FUNCTION), errmsg("function with OID %u does not exist", routine)));
    p = (Form_pg_proc)GETSTRUCT(tup);
    if (!owns(p->proowner))
        aclcheck_error(ACLCHECK_NOT_OWNER, object_type_of(p->prokind), NameStr(p->proname));
    return tup;
}

// --- SQL entry points -----------------------------------------------------------------------------

static Datum make_autonomous_body(FunctionCallInfo fcinfo)
{
    Oid routine = PG_GETARG_OID(0);
    HeapTuple tup = routine_owned_by_caller(routine);
    Form_pg_proc p = (Form_pg_proc)GETSTRUCT(tup);
    Oid nsp = body_namespace(false);
    char* probin = own_probin(fcinfo);
    Privileged priv;
    bool changed = false;
    bool isnull;

    // The body may be locked against a concurrent make_autonomous/make_ordinary of the same routine.
    LockDatabaseObject(ProcedureRelationId, routine, 0, ShareUpdateExclusiveLock);
    if (atx_autonomous_is_stub(tup)) {
        Oid body = atx_autonomous_find_body(tup);
        if (!OidIsValid(body))
            ereport(ERROR, (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
                            errmsg("%s is autonomous but its body is missing", format_procedure(routine)),
                            errhint("Restore schema %s from the dump the routine came from.", ATX_AUTONOMOUS_SCHEMA)));
        privileged_begin(&priv);
        sync_body(tup, body);
        link_body(body, routine);
        privileged_end(&priv);
        ereport(NOTICE, (errmsg("%s is autonomous already", format_procedure(routine))));
        PG_RETURN_OID(routine);
    }
    check_can_wrap(tup, nsp);
    privileged_begin(&priv);
    (void)wrap(tup, InvalidOid, probin, &changed);
    privileged_end(&priv);
    if (changed)
        ereport(NOTICE, (errmsg("%s is now VOLATILE and PARALLEL UNSAFE", format_procedure(routine)),
                         errdetail("Every call of an autonomous routine writes to the WAL and waits; its body keeps "
                                   "the declared volatility and parallel safety.")));
    (void)SysCacheGetAttr(PROCOID, tup, Anum_pg_proc_proconfig, &isnull);
    if (p->prosecdef && isnull)
        ereport(WARNING,
                (errmsg("SECURITY DEFINER %s has no SET search_path", format_procedure(routine)),
                 errdetail("Its body runs with the caller's search_path, as an ordinary call would, "
                           "so a caller can choose what its unqualified names mean."),
                 errhint("ALTER %s %s SET search_path = <its schemas>, pg_temp;",
                         p->prokind == PROKIND_PROCEDURE ? "PROCEDURE" : "FUNCTION", format_procedure(routine))));
    PG_RETURN_OID(routine);
}

static Datum make_ordinary_body(FunctionCallInfo fcinfo)
{
    Oid routine = PG_GETARG_OID(0);
    HeapTuple tup = routine_owned_by_caller(routine);
    Form_pg_proc p = (Form_pg_proc)GETSTRUCT(tup);
    Oid body;
    HeapTuple bt;
    ProcDef d;
    Privileged priv;
    ObjectAddress a;

    LockDatabaseObject(ProcedureRelationId, routine, 0, ShareUpdateExclusiveLock);
    if (!atx_autonomous_is_stub(tup)) {
        ereport(NOTICE, (errmsg("%s is not autonomous", format_procedure(routine))));
        PG_RETURN_OID(routine);
    }
    body = atx_autonomous_find_body(tup);
    if (!OidIsValid(body))
        ereport(ERROR, (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
                        errmsg("%s is autonomous but its body is missing: nothing to make it ordinary with",
                               format_procedure(routine)),
                        errhint("Restore schema %s from the dump the routine came from, or CREATE OR REPLACE the "
                                "routine with its body.",
                                ATX_AUTONOMOUS_SCHEMA)));
    bt = SearchSysCacheCopy1(PROCOID, ObjectIdGetDatum(body));
    if (!HeapTupleIsValid(bt))
        elog(ERROR, "cache lookup failed for function %u", body);
    read_def(bt, &d);
    // What the routine's owner may have changed since is the routine's (sync_body keeps them equal).
    d.secdef = p->prosecdef;
    d.leakproof = p->proleakproof;
    d.strict = p->proisstrict;
    if (p->prokind != PROKIND_PROCEDURE) {
        d.procost = p->procost;
        d.prorows = p->prorows;
    }
    d.proconfig = nullable_array(tup, Anum_pg_proc_proconfig);
    privileged_begin(&priv);
    (void)write_def(&d, NameStr(p->proname), p->pronamespace, p->proowner);
    ObjectAddressSet(a, ProcedureRelationId, body);
    performDeletion(&a, DROP_RESTRICT, PERFORM_DELETION_INTERNAL);
    CommandCounterIncrement();
    privileged_end(&priv);
    PG_RETURN_OID(routine);
}

// atx._autonomous_body(routine): its body, NULL when it is not autonomous (the view).
static Datum autonomous_body_body(FunctionCallInfo fcinfo)
{
    HeapTuple tup = SearchSysCache1(PROCOID, ObjectIdGetDatum(PG_GETARG_OID(0)));
    Oid body = InvalidOid;

    if (!HeapTupleIsValid(tup))
        PG_RETURN_NULL();
    if (atx_autonomous_is_stub(tup))
        body = atx_autonomous_find_body(tup);
    ReleaseSysCache(tup);
    if (!OidIsValid(body))
        PG_RETURN_NULL();
    PG_RETURN_OID(body);
}

// --- keeping routine and body in step: the event triggers ---------------------------------------

// Every autonomous routine of the database (pg_proc has no index on prosrc: a scan, made only
// by the DDL that needs it).
static List* all_stubs(void)
{
    Relation rel = table_open(ProcedureRelationId, AccessShareLock);
    TableScanDesc scan = table_beginscan_catalog(rel, 0, NULL);
    HeapTuple tup;
    List* out = NIL;

    while (HeapTupleIsValid(tup = heap_getnext(scan, ForwardScanDirection))) {
        Form_pg_proc p = (Form_pg_proc)GETSTRUCT(tup);
        bool isnull;
        Datum src;
        if (p->prolang != ClanguageId)
            continue;
        src = heap_getattr(tup, Anum_pg_proc_prosrc, RelationGetDescr(rel), &isnull);
        if (!isnull && strcmp(TextDatumGetCString(src), ATX_AUTONOMOUS_SYMBOL) == 0)
            out = lappend_oid(out, p->oid);
    }
    table_endscan(scan);
    table_close(rel, AccessShareLock);
    return out;
}

// A body that is nobody's dependent yet (restored by pg_restore, which does not carry pg_depend):
// linked to the autonomous routine whose body name and arguments it has.
static void adopt_body(HeapTuple body)
{
    Form_pg_proc b = (Form_pg_proc)GETSTRUCT(body);
    ListCell* lc;

    if (OidIsValid(linked_routine(b->oid)))
        return;
    foreach (lc, all_stubs()) {
        HeapTuple r = SearchSysCache1(PROCOID, ObjectIdGetDatum(lfirst_oid(lc)));
        bool match;
        if (!HeapTupleIsValid(r))
            continue;
        match = body_by_name(r, b->pronamespace) == b->oid;
        ReleaseSysCache(r);
        if (match) {
            link_body(b->oid, lfirst_oid(lc));
            return;
        }
    }
}

static void reconcile(Oid oid, Oid nsp, const char* probin)
{
    HeapTuple tup = SearchSysCacheCopy1(PROCOID, ObjectIdGetDatum(oid));
    Form_pg_proc p;
    Oid body;

    if (!HeapTupleIsValid(tup))
        return;
    p = (Form_pg_proc)GETSTRUCT(tup);
    if (p->pronamespace == nsp) {
        Oid routine;
        adopt_body(tup);
        // Its owner ALTERed or GRANTed on the body itself: the routine's say wins.
        routine = linked_routine(oid);
        if (OidIsValid(routine)) {
            HeapTuple r = SearchSysCacheCopy1(PROCOID, ObjectIdGetDatum(routine));
            if (HeapTupleIsValid(r) && atx_autonomous_is_stub(r))
                sync_body(r, oid);
        }
        return;
    }
    if (atx_autonomous_is_stub(tup)) {
        body = atx_autonomous_find_body(tup);
        if (!OidIsValid(body))
            return;  // restored before its body: adopt_body links them
        sync_body(tup, body);
        link_body(body, oid);
        if (p->provolatile != PROVOLATILE_VOLATILE || p->proparallel != PROPARALLEL_UNSAFE) {
            (void)write_stub(tup, probin);
            ereport(NOTICE, (errmsg("%s stays VOLATILE and PARALLEL UNSAFE: it is autonomous", format_procedure(oid)),
                             errhint("To change its body's volatility, make it ordinary, ALTER it, and make it "
                                     "autonomous again.")));
        }
        return;
    }
    body = linked_body(oid, nsp);
    if (OidIsValid(body)) {
        // CREATE OR REPLACE of an autonomous routine: its new definition becomes the body.
        bool changed;
        (void)wrap(tup, body, probin, &changed);
        ereport(NOTICE,
                (errmsg("%s stays autonomous: its new definition is its body", format_procedure(oid)),
                 errhint("SELECT atx.make_ordinary('%s'); makes it an ordinary routine.", format_procedure(oid))));
    }
}

static Datum autonomous_ddl_body(FunctionCallInfo fcinfo)
{
    Oid nsp = body_namespace(true);
    char* probin;
    List* oids = NIL;
    bool all = false;
    Privileged priv;
    ListCell* lc;

    if (!CALLED_AS_EVENT_TRIGGER(fcinfo))
        ereport(ERROR, (errcode(ERRCODE_E_R_I_E_EVENT_TRIGGER_PROTOCOL_VIOLATED),
                        errmsg("atx._autonomous_ddl() is an event trigger function")));
    if (!OidIsValid(nsp))
        PG_RETURN_VOID();
    probin = own_probin(fcinfo);
    if (SPI_connect() != SPI_OK_CONNECT)
        elog(ERROR, "SPI_connect failed");
    if (SPI_execute("SELECT objid, command_tag IN ('GRANT', 'REVOKE') FROM pg_catalog.pg_event_trigger_ddl_commands() "
                    "WHERE classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_proc'::pg_catalog.regclass "
                    "   OR (command_tag IN ('GRANT', 'REVOKE') AND pg_catalog.lower(object_type) IN ('function', "
                    "'procedure', 'routine'))",
                    true, 0) != SPI_OK_SELECT)
        elog(ERROR, "could not read the DDL commands");
    for (uint64 i = 0; i < SPI_processed; i++) {
        bool isnull, grant;
        Datum v = SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull);
        grant = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2, &isnull));
        if (grant)
            all = true;
        else
            oids = lappend_oid(oids, DatumGetObjectId(v));
    }
    SPI_finish();
    if (all)
        oids = list_concat(oids, all_stubs());
    if (oids == NIL)
        PG_RETURN_VOID();
    privileged_begin(&priv);
    foreach (lc, oids)
        reconcile(lfirst_oid(lc), nsp, probin);
    privileged_end(&priv);
    PG_RETURN_VOID();
}

// sql_drop: a body may go only with its routine (DROP FUNCTION of the routine) or after
// atx.make_ordinary; dropped alone, it would leave the routine with nothing to run.
static Datum autonomous_drop_body(FunctionCallInfo fcinfo)
{
    bool bodies;
    ListCell* lc;

    if (!CALLED_AS_EVENT_TRIGGER(fcinfo))
        ereport(ERROR, (errcode(ERRCODE_E_R_I_E_EVENT_TRIGGER_PROTOCOL_VIOLATED),
                        errmsg("atx._autonomous_drop() is an event trigger function")));
    if (SPI_connect() != SPI_OK_CONNECT)
        elog(ERROR, "SPI_connect failed");
    if (SPI_execute("SELECT 1 FROM pg_catalog.pg_event_trigger_dropped_objects() "
                    "WHERE classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_proc'::pg_catalog.regclass "
                    "  AND schema_name OPERATOR(pg_catalog.=) '" ATX_AUTONOMOUS_SCHEMA "' LIMIT 1",
                    true, 0) != SPI_OK_SELECT)
        elog(ERROR, "could not read the dropped objects");
    bodies = SPI_processed > 0;
    SPI_finish();
    if (!bodies || !OidIsValid(body_namespace(true)))
        PG_RETURN_VOID();
    foreach (lc, all_stubs()) {
        HeapTuple r = SearchSysCache1(PROCOID, ObjectIdGetDatum(lfirst_oid(lc)));
        bool missing;
        if (!HeapTupleIsValid(r))
            continue;
        missing = !OidIsValid(atx_autonomous_find_body(r));
        ReleaseSysCache(r);
        if (missing)
            ereport(ERROR, (errcode(ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST),
                            errmsg("cannot drop the body of autonomous routine %s", format_procedure(lfirst_oid(lc))),
                            errhint("SELECT atx.make_ordinary('%s'); first, or drop the routine itself.",
                                    format_procedure(lfirst_oid(lc)))));
    }
    PG_RETURN_VOID();
}

ATX_ENTRY(atx_make_autonomous, make_autonomous_body)
ATX_ENTRY(atx_make_ordinary, make_ordinary_body)
ATX_ENTRY(atx_autonomous_body, autonomous_body_body)
ATX_ENTRY(atx_autonomous_ddl, autonomous_ddl_body)
ATX_ENTRY(atx_autonomous_drop, autonomous_drop_body)
