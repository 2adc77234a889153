// pg_atx.so: module magic, _PG_init and the GUCs.
//
// The same library is loaded as an SQL function library and as the output
// plugin "pg_atx" (in a walsender or a pg_logical_slot_* call).
#include "atx_ext.h"
#include "pg_guard.h"

extern "C" {
PG_MODULE_MAGIC;
void _PG_init(void);
}

char* atx_capture_gucs = nullptr;
int atx_max_payload_size = 1024 * 1024;

const char* const atx_default_gucs[] = {"search_path", "TimeZone", "DateStyle", "IntervalStyle"};
const int atx_n_default_gucs = lengthof(atx_default_gucs);

// GUCs that must never be replayed: they change identity, and are refused in
// a security-restricted operation anyway, so capturing them would only make
// every message fail.
static const char* const forbidden_gucs[] = {"role", "session_authorization"};

// atx.capture_gucs check hook: every name must be a known GUC (or a custom
// placeholder that already exists), so a typo fails at SET, not silently.
static bool check_capture_gucs(char** newval, void** extra, GucSource source)
{
    char* raw = pstrdup(*newval);
    List* names = NIL;
    ListCell* lc;

    if (!SplitIdentifierString(raw, ',', &names)) {
        GUC_check_errcode(ERRCODE_INVALID_PARAMETER_VALUE);
        GUC_check_errdetail("List syntax is invalid.");
        pfree(raw);
        list_free(names);
        return false;
    }
    foreach (lc, names) {
        const char* name = (const char*)lfirst(lc);
        for (size_t i = 0; i < lengthof(forbidden_gucs); i++) {
            if (pg_strcasecmp(name, forbidden_gucs[i]) == 0) {
                GUC_check_errcode(ERRCODE_INVALID_PARAMETER_VALUE);
                GUC_check_errdetail("\"%s\" cannot be captured: it would change the role a message runs as.",
                                    name);
                pfree(raw);
                list_free(names);
                return false;
            }
        }
        // Names are checked only in a backend connected to a database: at
        // postmaster start extensions that define custom GUCs may not be loaded yet.
        if (IsUnderPostmaster && GetConfigOption(name, true, false) == NULL) {
            GUC_check_errcode(ERRCODE_INVALID_PARAMETER_VALUE);
            GUC_check_errdetail("\"%s\" is not a known configuration parameter.", name);
            GUC_check_errhint("List names of existing parameters, separated by commas.");
            pfree(raw);
            list_free(names);
            return false;
        }
    }
    pfree(raw);
    list_free(names);
    return true;
}

static void pg_init_body()
{
    DefineCustomStringVariable(
        "atx.capture_gucs",
        "Further configuration parameters captured by atx_log and applied when the message runs.",
        "Comma-separated names; search_path, TimeZone, DateStyle and IntervalStyle are always captured.",
        &atx_capture_gucs, "", PGC_USERSET, GUC_LIST_INPUT, check_capture_gucs, NULL, NULL);

    DefineCustomIntVariable("atx.max_payload_size",
                            "Largest pg_atx message (bytes, MAC included) that atx_log will write.",
                            NULL, &atx_max_payload_size, 1024 * 1024, 256, MaxAllocSize / 2, PGC_SUSET,
                            GUC_UNIT_BYTE, NULL, NULL, NULL);

    DefineCustomIntVariable("atx.exec_timeout",
                            "Longest time atx_exec waits for the applier to commit its message (0: no limit).",
                            "The caller's statement_timeout applies as well. The message is applied even "
                            "after the wait ended.",
                            &atx_exec_timeout, 30000, 0, INT_MAX, PGC_USERSET, GUC_UNIT_MS, NULL, NULL, NULL);

    // PGC_POSTMASTER variables can only be created while preloading; a library
    // loaded later keeps the default (atx_exec refuses to run there anyway).
    if (process_shared_preload_libraries_in_progress) {
        DefineCustomIntVariable("atx.exec_max_result_bytes",
                                "Largest JSON result (the rows an atx_exec statement returned) passed back "
                                "to the caller.",
                                "Reserved in shared memory for every backend; larger results are dropped "
                                "(result_truncated).",
                                &atx_exec_max_result_bytes, 16384, 0, 1024 * 1024, PGC_POSTMASTER,
                                GUC_UNIT_BYTE, NULL, NULL, NULL);
    }

    MarkGUCPrefixReserved("atx");

    // atx_exec's waiter registry lives in shared memory, which only a
    // preloaded library can request.
    if (process_shared_preload_libraries_in_progress)
        atx_exec_install_shmem_hooks();
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
