// pg_atx.so: module magic, _PG_init and the GUCs.
//
// The same library is loaded as an SQL function library, as the output plugin "pg_atx" (in a
// walsender or a pg_logical_slot_* call), and, preloaded, for atx_exec's shared memory.
#include "apply_registry.h"
#include "atx_ext.h"
#include "emit.h"
#include "hmac_key.h"
#include "pg_guard.h"
#include "validate.h"
#include "waiters.h"

extern "C" {
PG_MODULE_MAGIC;
void _PG_init(void);
}

char* atx_capture_gucs = nullptr;
int atx_max_payload_size = 1024 * 1024;

static const struct config_enum_entry abandon_options[] = {
    {"cancel", ATX_ABANDON_CANCEL, false},
    {"apply", ATX_ABANDON_APPLY, false},
    {NULL, 0, false},
};

// atx.capture_gucs check hook: names of existing parameters (a typo fails at SET, not
// silently), or custom names (with a dot, such as app.tenant, which may be defined later), but
// never the ones that would change identity.
static bool check_capture_gucs(char** newval, void** extra, GucSource source)
{
    char* raw = pstrdup(*newval);
    List* names = NIL;
    ListCell* lc;
    bool ok = true;

    if (!SplitIdentifierString(raw, ',', &names)) {
        GUC_check_errcode(ERRCODE_INVALID_PARAMETER_VALUE);
        GUC_check_errdetail("List syntax is invalid.");
        ok = false;
    }
    foreach (lc, names) {
        const char* name = (const char*)lfirst(lc);
        if (!ok)
            break;
        if (pg_strcasecmp(name, "role") == 0 || pg_strcasecmp(name, "session_authorization") == 0) {
            GUC_check_errcode(ERRCODE_INVALID_PARAMETER_VALUE);
            GUC_check_errdetail("\"%s\" cannot be carried: it would change the role a message runs as.", name);
            ok = false;
        } else if (strchr(name, '.') == NULL && IsUnderPostmaster && GetConfigOption(name, true, false) == NULL) {
            // Checked only in a backend: at postmaster start extensions may not be loaded yet.
            GUC_check_errcode(ERRCODE_INVALID_PARAMETER_VALUE);
            GUC_check_errdetail("\"%s\" is not a known configuration parameter.", name);
            GUC_check_errhint("List names of existing parameters, or custom ones with a dot, separated by commas.");
            ok = false;
        }
    }
    pfree(raw);
    list_free(names);
    return ok;
}

static void pg_init_body()
{
    DefineCustomStringVariable(
        "atx.capture_gucs", "Further configuration parameters every message carries, changed or not.",
        "Comma-separated names. Messages already carry every parameter the calling session changed (SET, "
        "ALTER ROLE ... SET, connection options) and search_path, TimeZone, DateStyle and IntervalStyle.",
        &atx_capture_gucs, "", PGC_USERSET, GUC_LIST_INPUT, check_capture_gucs, NULL, NULL);

    DefineCustomIntVariable(
        "atx.max_payload_size", "Largest pg_atx message (bytes, MAC included) that atx_log will write.", NULL,
        &atx_max_payload_size, 1024 * 1024, 256, MaxAllocSize / 2, PGC_SUSET, GUC_UNIT_BYTE, NULL, NULL, NULL);

    DefineCustomBoolVariable("atx.validate", "Parse, analyze and check privileges of a statement when it is emitted.",
                             "A statement that can never run then fails in the caller with its own SQLSTATE.",
                             &atx_validate, true, PGC_USERSET, 0, NULL, NULL, NULL);

    DefineCustomBoolVariable("atx.allow_in_read_only", "Allow atx_log and atx_exec in read-only transactions.",
                             "The autonomous statement may write although its caller promised not to.",
                             &atx_allow_in_read_only, false, PGC_SUSET, 0, NULL, NULL, NULL);

    DefineCustomIntVariable("atx.exec_timeout",
                            "Longest time atx_exec waits for the applier to commit its message (0: no limit).",
                            "The caller's statement_timeout applies as well. What then happens to the message "
                            "is atx.exec_on_abandon's choice.",
                            &atx_exec_timeout, 30000, 0, INT_MAX, PGC_USERSET, GUC_UNIT_MS, NULL, NULL, NULL);

    DefineCustomEnumVariable("atx.exec_on_abandon",
                             "What becomes of a message whose atx_exec caller stopped waiting (timeout, deadlock, "
                             "cancel) before it began to commit.",
                             "cancel: it is not applied, and dead-lettered with SQLSTATE 57014; apply: it is applied "
                             "later. Carried in the message: the setting at the call decides.",
                             &atx_exec_on_abandon, ATX_ABANDON_CANCEL, abandon_options, PGC_USERSET, 0, NULL, NULL,
                             NULL);

    DefineCustomStringVariable("atx.key_file", "Where the HMAC key of pg_atx messages is kept.",
                               "An absolute path; empty: pg_atx.key in the data directory. Every node that may "
                               "apply messages needs the same key.",
                               &atx_key_file, "", PGC_SIGHUP, 0, NULL, NULL, NULL);

    // PGC_POSTMASTER variables can only be created while preloading; a library loaded later
    // keeps the default (atx_exec refuses to run there anyway).
    if (process_shared_preload_libraries_in_progress) {
        DefineCustomIntVariable("atx.exec_max_result_bytes",
                                "Largest JSON result (the rows an atx_exec statement returned) passed back to the "
                                "caller.",
                                "Reserved in shared memory for every backend; larger results are dropped while they "
                                "are produced (result_truncated).",
                                &atx_exec_max_result_bytes, 16384, 0, 1024 * 1024, PGC_POSTMASTER, GUC_UNIT_BYTE, NULL,
                                NULL, NULL);
    }

    MarkGUCPrefixReserved("atx");

    // atx_exec's waiters and the apply registry live in shared memory, which only a preloaded
    // library can request.
    if (process_shared_preload_libraries_in_progress) {
        atx_waiters_install_shmem_hooks();
        atx_registry_install_shmem_hooks();
    }
}

extern "C" void _PG_init(void)
{
    atx::CaughtError caught;
    try {
        pg_init_body();
        return;
    } catch (...) {
        atx::capture_exception(caught);
    }
    atx::raise_caught(caught);
}
