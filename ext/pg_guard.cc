// See pg_guard.h for the rules of the C++/PostgreSQL boundary.
#include "pg_guard.h"

#include <cstdio>
#include <cstring>
#include <new>
#include <stdexcept>

#include "bytes.h"
#include "message.h"

namespace atx {

void throw_current_pg_error(MemoryContext callerContext)
{
    MemoryContextSwitchTo(callerContext);
    ErrorData* edata = CopyErrorData();
    FlushErrorState();
    int code = edata->sqlerrcode;
    // Copy out of palloc'd memory before any C++ allocation can throw.
    std::string msg = edata->message ? edata->message : "unknown error";
    std::string hint = edata->hint ? edata->hint : "";
    std::string detail = edata->detail ? edata->detail : "";
    FreeErrorData(edata);
    throw PgException(code, std::move(msg), std::move(hint), std::move(detail));
}

static void copy_text(char* dst, size_t cap, const char* src) noexcept
{
    std::snprintf(dst, cap, "%s", src ? src : "");
}

void capture_exception(CaughtError& e) noexcept
{
    try {
        throw;
    } catch (const PgException& ex) {
        e.sqlerrcode = ex.sqlerrcode();
        copy_text(e.message, sizeof e.message, ex.what());
        copy_text(e.hint, sizeof e.hint, ex.hint().c_str());
        copy_text(e.detail, sizeof e.detail, ex.detail().c_str());
    } catch (const UnsupportedVersion& ex) {
        e.sqlerrcode = ERRCODE_FEATURE_NOT_SUPPORTED;
        copy_text(e.message, sizeof e.message, ex.what());
    } catch (const DecodeError& ex) {
        e.sqlerrcode = ERRCODE_INVALID_BINARY_REPRESENTATION;
        copy_text(e.message, sizeof e.message, ex.what());
    } catch (const std::length_error& ex) {
        e.sqlerrcode = ERRCODE_PROGRAM_LIMIT_EXCEEDED;
        copy_text(e.message, sizeof e.message, ex.what());
    } catch (const std::bad_alloc&) {
        e.sqlerrcode = ERRCODE_OUT_OF_MEMORY;
        copy_text(e.message, sizeof e.message, "out of memory");
    } catch (const std::exception& ex) {
        e.sqlerrcode = ERRCODE_INTERNAL_ERROR;
        copy_text(e.message, sizeof e.message, ex.what());
    } catch (...) {
        e.sqlerrcode = ERRCODE_INTERNAL_ERROR;
        copy_text(e.message, sizeof e.message, "unknown C++ exception");
    }
}

void raise_caught(const CaughtError& e)
{
    ereport(ERROR, (errcode(e.sqlerrcode ? e.sqlerrcode : ERRCODE_INTERNAL_ERROR), errmsg("%s", e.message),
                    e.detail[0] ? errdetail("%s", e.detail) : 0, e.hint[0] ? errhint("%s", e.hint) : 0));
    pg_unreachable();
}

}  // namespace atx
