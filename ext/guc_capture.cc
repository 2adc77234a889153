// The caller's settings, carried in every message and restored when it runs (issue 14).
//
// A parallel worker gets every setting its leader's session changed (SerializeGUCState);
// an autonomous statement gets the same: every parameter whose value in the calling session
// came from ALTER ROLE / ALTER ROLE IN DATABASE, the connection's options or SET (custom
// placeholders such as app.tenant included), plus four that always travel because the apply
// session's own values would otherwise show through (search_path, TimeZone, DateStyle,
// IntervalStyle), plus the names in atx.capture_gucs. Settings from the server's
// configuration or ALTER DATABASE are the same in the apply session and are left out.
//
// The deny list keeps what would change identity, what belongs to the caller's transaction
// or connection, and what the applier must control for the guarantees it gives (timeouts,
// commit durability, message levels). Plain C style (see pg_guard.h).
//
// Private to the server and read here (docs/design.md, "Private assumptions"): the parameter
// table's structs (utils/guc_tables.h) and, from 16 on, the bytes SerializeGUCState writes. Both
// are checked against the server before they are trusted: the table once per process (our reading
// of four entries must agree with GetConfigOption's), the serialized state on every read (bounds,
// and every entry against the table). A mismatch fails closed: XX000, nothing is written.
#include "guc_capture.h"

extern "C" {
#include "utils/guc_tables.h"
}

#include "guc_state.h"

// Carried even when unchanged: the apply session's own values would otherwise show through.
static const char* const atx_default_gucs[] = {"search_path", "TimeZone", "DateStyle", "IntervalStyle"};

// clang-format off: grouped by reason, one group per line
static const char* const denied_gucs[] = {
    // identity: refused inside a security-restricted operation anyway
    "role",
    "session_authorization",
    "is_superuser",
    // the caller's transaction and connection
    "transaction_isolation",
    "transaction_read_only",
    "transaction_deferrable",
    "default_transaction_isolation",
    "default_transaction_read_only",
    "default_transaction_deferrable",
    "application_name",
    "client_encoding",
    // what the applier controls
    "statement_timeout",
    "lock_timeout",
    "idle_in_transaction_session_timeout",
    "idle_session_timeout",
    "transaction_timeout",
    "synchronous_commit",
    "client_min_messages",
    // this very mechanism
    "atx.capture_gucs",
};
// clang-format on

bool atx_guc_denied(const char* name)
{
    for (size_t i = 0; i < lengthof(denied_gucs); i++)
        if (pg_strcasecmp(name, denied_gucs[i]) == 0)
            return true;
    return false;
}

#if PG_VERSION_NUM < 160000
// Before 16 the server's own array, cheap to walk on every call (16+: add_session_changed).
static struct config_generic** all_gucs(int* n)
{
    *n = GetNumConfigOptions();
    return get_guc_variables();
}
#endif

// Changed in the caller's own session (not inherited from the server or the database).
static bool changed_by_session(const struct config_generic* g)
{
    switch (g->source) {
    case PGC_S_USER:
    case PGC_S_DATABASE_USER:
    case PGC_S_CLIENT:
    case PGC_S_SESSION: return g->context == PGC_USERSET || g->context == PGC_SUSET;
    default: return false;
    }
}

// The entries of the always-carried and the denied parameters, looked up once per process: a
// row trigger calls atx_log per row, and comparing every changed parameter's name with twenty
// others took a tenth of its time. Built-in entries never move; pg_atx's own are defined when it
// loads, before any call. A name the server does not have (transaction_timeout before 17) stays
// NULL.
static const struct config_generic* carried_vars[lengthof(atx_default_gucs)];
static const struct config_generic* denied_vars[lengthof(denied_gucs)];

// The server's layout is not the one this module was built for: refuse, before anything is
// written, rather than carry settings read from the wrong bytes.
[[noreturn]] static void layout_mismatch(const char* where, const char* what, const char* name)
{
    ereport(ERROR, (errcode(ERRCODE_INTERNAL_ERROR),
                    errmsg("pg_atx cannot read this session's settings: %s%s%s", what, name ? ", parameter " : "",
                           name ? name : ""),
                    errdetail("pg_atx reads %s, private to the server, and checks what it reads; this server (%s) does "
                              "not have the layout pg_atx %s was built for (PostgreSQL %s).",
                              where, GetConfigOption("server_version", false, false), ATX_VERSION, PG_VERSION),
                    errhint("Install the pg_atx built for this server's version. Nothing was written.")));
}

// Our reading of a string or enum entry against the server's own formatting of it.
static void check_entry(const struct config_generic* g, const char* name, enum config_type type)
{
    const char* ours = NULL;
    const char* server;
    if (g == NULL || pg_strcasecmp(g->name, name) != 0 || g->vartype != type || g->context != PGC_USERSET)
        layout_mismatch("the parameter table (utils/guc_tables.h)", "an entry is not what its name says", name);
    if (type == PGC_STRING)
        ours = *((const struct config_string*)g)->variable;
    else if (type == PGC_ENUM)
        ours = config_enum_lookup_by_value((struct config_enum*)g, *((const struct config_enum*)g)->variable);
    server = GetConfigOption(name, false, false);
    if (ours == NULL || server == NULL || strcmp(ours, server) != 0)
        layout_mismatch("the parameter table (utils/guc_tables.h)",
                        "a value read from an entry differs from the server's", name);
}

static void resolve_vars(void)
{
    static bool done = false;
    if (done)
        return;
#if PG_VERSION_NUM < 160000
    {
        int n;
        struct config_generic** vars = all_gucs(&n);
        for (int k = 0; k < n; k++) {
            for (size_t d = 0; d < lengthof(atx_default_gucs); d++)
                if (pg_strcasecmp(vars[k]->name, atx_default_gucs[d]) == 0)
                    carried_vars[d] = vars[k];
            for (size_t d = 0; d < lengthof(denied_gucs); d++)
                if (pg_strcasecmp(vars[k]->name, denied_gucs[d]) == 0)
                    denied_vars[d] = vars[k];
        }
    }
#else
    for (size_t d = 0; d < lengthof(atx_default_gucs); d++)
        carried_vars[d] = find_option(atx_default_gucs[d], false, true, ERROR);
    for (size_t d = 0; d < lengthof(denied_gucs); d++)
        denied_vars[d] = find_option(denied_gucs[d], false, true, ERROR);
#endif
    // atx_default_gucs: search_path, TimeZone, DateStyle, IntervalStyle (TimeZone's shown value
    // comes from a show hook, so it is not compared).
    check_entry(carried_vars[0], "search_path", PGC_STRING);
    check_entry(carried_vars[2], "DateStyle", PGC_STRING);
    check_entry(carried_vars[3], "IntervalStyle", PGC_ENUM);
    done = true;
}

static bool is_one_of(const struct config_generic* g, const struct config_generic* const* vars, size_t n)
{
    for (size_t d = 0; d < n; d++)
        if (g == vars[d])
            return true;
    return false;
}

static void append(List** out, const char* name, char* value, bool privileged)
{
    AtxGucC* g = (AtxGucC*)palloc(sizeof(AtxGucC));
    g->name = pstrdup(name);
    g->value = value;
    g->privileged = privileged;
    *out = lappend(*out, g);
}

static bool listed(List* names, const char* name)
{
    ListCell* lc;
    foreach (lc, names)
        if (pg_strcasecmp(((AtxGucC*)lfirst(lc))->name, name) == 0)
            return true;
    return false;
}

// A parameter found in the server's table; dedup: whether it may be there already.
static void add_var(List** out, const struct config_generic* g, bool privileged, bool dedup)
{
    const char* value;
    if (is_one_of(g, denied_vars, lengthof(denied_vars)) || (dedup && listed(*out, g->name)))
        return;
    // No privilege check: the value goes into a message only this server's apply reads.
    if ((value = GetConfigOption(g->name, true, false)) != NULL)
        append(out, g->name, pstrdup(value), privileged);  // numbers come formatted in a static buffer
}

// A parameter named in atx.capture_gucs (it may not exist).
static void add_named(List** out, const char* name)
{
    const char* value;
    if (atx_guc_denied(name) || listed(*out, name))
        return;
    value = GetConfigOption(name, true, false);
    if (value != NULL)
        append(out, name, pstrdup(value), false);  // numbers come formatted in a static buffer
}

#if PG_VERSION_NUM >= 160000
static int by_name(const ListCell* a, const ListCell* b)
{
    return pg_strcasecmp(((AtxGucC*)lfirst(a))->name, ((AtxGucC*)lfirst(b))->name);
}

// Since PostgreSQL 16 get_guc_variables() builds and sorts a fresh array on every call (about
// 0.1 ms, doubling atx_log's cost). What we need is on the list of parameters whose source is
// not the default, which only SerializeGUCState walks: its output (as a parallel worker gets
// it, guc.c serialize_variable) is read back for the names alone.
// The entries were written from the server's table a moment ago, so each must match its entry
// there: where it came from, who set it, and for strings and booleans the value.
static void check_serialized(const AtxGucStateEntry* e, const struct config_generic* g)
{
    const char* file = g->sourcefile ? g->sourcefile : "";
    bool same = g->source != PGC_S_DEFAULT && (int)g->source == e->source && (int)g->scontext == e->scontext &&
                g->srole == e->srole && strcmp(file, e->sourcefile) == 0 &&
                (!file[0] || g->sourceline == e->sourceline);
    if (same && g->vartype == PGC_STRING) {
        const char* v = *((const struct config_string*)g)->variable;
        same = strcmp(v ? v : "", e->value) == 0;
    } else if (same && g->vartype == PGC_BOOL) {
        same = strcmp(*((const struct config_bool*)g)->variable ? "true" : "false", e->value) == 0;
    }
    if (!same)
        layout_mismatch("SerializeGUCState", "an entry differs from the parameter it names", e->name);
}

static void add_session_changed(List** out)
{
    Size size = EstimateGUCStateSpace();
    char* buf = (char*)palloc(size);
    const AtxGucStateLayout layout = {sizeof(Size), sizeof(int), sizeof(GucSource), sizeof(GucContext), sizeof(Oid)};
    AtxGucStateReader r;
    AtxGucStateEntry e;
    const char* why;
    int rc;

    SerializeGUCState(size, buf);
    if ((why = atx_guc_state_begin(&r, buf, size, layout)) != NULL)
        layout_mismatch("SerializeGUCState", why, NULL);
    while ((rc = atx_guc_state_next(&r, &e, &why)) == 1) {
        struct config_generic* g = find_option(e.name, false, true, ERROR);
        if (g == NULL)
            layout_mismatch("SerializeGUCState", "a name that is no parameter", e.name);
        check_serialized(&e, g);
        if (changed_by_session(g))
            add_var(out, g, g->scontext == PGC_SUSET, false);  // each name once in the state
    }
    if (rc < 0)
        layout_mismatch("SerializeGUCState", why, NULL);
    pfree(buf);
}
#endif

AtxGucC* atx_capture_settings(int* count)
{
    List* out = NIL;
    AtxGucC* arr;
    ListCell* lc;
    int i = 0;

    resolve_vars();
#if PG_VERSION_NUM >= 160000
    // Session-changed first, so that an always-carried one keeps its setting context; then the
    // rest of the four; in name order, as the scan below, so a payload does not depend on the major.
    add_session_changed(&out);
    for (size_t d = 0; d < lengthof(carried_vars); d++)
        if (carried_vars[d] != NULL)
            add_var(&out, carried_vars[d], false, true);
    list_sort(out, by_name);
#else
    {
        int n;
        struct config_generic** vars = all_gucs(&n);
        for (int k = 0; k < n; k++) {
            const struct config_generic* g = vars[k];
            const bool changed = changed_by_session(g);
            if (changed || is_one_of(g, carried_vars, lengthof(carried_vars)))
                add_var(&out, g, changed && g->scontext == PGC_SUSET, false);  // each entry once
        }
    }
#endif
    if (atx_capture_gucs && atx_capture_gucs[0]) {
        char* raw = pstrdup(atx_capture_gucs);
        List* extra = NIL;
        if (!SplitIdentifierString(raw, ',', &extra))
            ereport(ERROR,
                    (errcode(ERRCODE_INVALID_PARAMETER_VALUE), errmsg("invalid list syntax in atx.capture_gucs")));
        foreach (lc, extra)
            add_named(&out, (const char*)lfirst(lc));
    }

    arr = (AtxGucC*)palloc0(sizeof(AtxGucC) * (list_length(out) + 1));
    foreach (lc, out)
        arr[i++] = *(AtxGucC*)lfirst(lc);
    *count = i;
    return arr;
}

void atx_restore_settings(const AtxGucC* gucs, int n, bool caller_is_superuser, GucAction action)
{
    for (int i = 0; i < n; i++) {
        const char* current;
        GucContext context;

        if (atx_guc_denied(gucs[i].name))
            continue;
        // A value already in effect is not set again: a role may carry a parameter it may
        // read but not set (one from postgresql.conf listed in atx.capture_gucs).
        current = GetConfigOption(gucs[i].name, true, false);
        if (current != NULL && strcmp(current, gucs[i].value) == 0)
            continue;
        // With the right it was set with in the caller's session (ALTER ROLE ... SET by a
        // superuser), never more.
        context = (caller_is_superuser || gucs[i].privileged) ? PGC_SUSET : PGC_USERSET;
        (void)set_config_option(gucs[i].name, gucs[i].value, context, PGC_S_SESSION, action, true, 0, false);
    }
}
