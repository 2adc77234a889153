// The one boundary between C++ exceptions and PostgreSQL's longjmp errors.
//
// PostgreSQL reports errors with ereport(ERROR) = siglongjmp to the nearest
// PG_TRY. A longjmp through a C++ frame skips destructors; a C++ exception
// through a C frame (the executor, the walsender) is undefined. So:
//
// WRONG (leaks, or worse, corrupts the heap the std::string points into):
//
//     Datum f(PG_FUNCTION_ARGS) {
//         std::string s = make_something();      // owns heap memory
//         Oid t = typenameTypeId(NULL, name);    // may ereport -> longjmp skips ~string
//         throw std::runtime_error("x");          // unwinds into fmgr's C frame: UB
//     }
//
// RIGHT:
//   * every extern "C" entry point is a thin shim: ATX_ENTRY(name, body)
//     calls body inside try/catch and turns any exception into ereport(ERROR)
//     with a real SQLSTATE, *after* the catch block has ended;
//   * C++ code that owns destructible objects calls PostgreSQL only through
//     pg_guard([&]{ ... }), which catches the PostgreSQL error
//     (PG_TRY/CopyErrorData/FlushErrorState) and rethrows it as PgException.
//     Nothing inside the PG_TRY body throws.
//   * code that calls many PostgreSQL APIs (apply, emit) is written in plain C
//     style (no objects with destructors), so a longjmp through it is harmless.
#pragma once

#include "pg_headers.h"

#include <exception>
#include <string>
#include <utility>

namespace atx {

// A PostgreSQL error (or one we raise from C++), carried as a C++ exception.
class PgException : public std::exception {
public:
    PgException(int sqlerrcode, std::string message, std::string hint = std::string(),
                std::string detail = std::string())
        : sqlerrcode_(sqlerrcode), message_(std::move(message)), hint_(std::move(hint)), detail_(std::move(detail))
    {
    }
    const char* what() const noexcept override { return message_.c_str(); }
    int sqlerrcode() const noexcept { return sqlerrcode_; }
    const std::string& hint() const noexcept { return hint_; }
    const std::string& detail() const noexcept { return detail_; }

private:
    int sqlerrcode_;
    std::string message_;
    std::string hint_;
    std::string detail_;
};

// Reports the PostgreSQL error that is current in ErrorContext as a PgException.
// Defined out of line: it runs after PG_TRY has ended.
[[noreturn]] void throw_current_pg_error(MemoryContext callerContext);

// Runs f (PostgreSQL calls only, never a throw) and converts an ereport(ERROR)
// into PgException. Only safe where no (sub)transaction state needs cleanup
// after the error, e.g. palloc or a type output function.
// f runs through this noexcept frame: should it throw after all, the program terminates here
// instead of unwinding past PG_TRY, which would leave PG_exception_stack pointing into a dead
// stack frame for the next ereport to jump to.
template <typename F>
void call_noexcept(F& f) noexcept
{
    f();
}

template <typename F>
void pg_guard(F&& f)
{
    MemoryContext callerContext = CurrentMemoryContext;
    bool failed = false;
    PG_TRY();
    {
        call_noexcept(f);
    }
    PG_CATCH();
    {
        failed = true;
    }
    PG_END_TRY();
    if (failed)
        throw_current_pg_error(callerContext);
}

// What an entry point's catch block saves so that ereport runs outside it.
struct CaughtError {
    int sqlerrcode = 0;
    char message[1024] = {0};
    char detail[1024] = {0};
    char hint[512] = {0};
};

// Fills e from the exception in flight (call only inside a catch block).
void capture_exception(CaughtError& e) noexcept;

// ereport(ERROR) from a CaughtError. Call outside any catch block.
[[noreturn]] void raise_caught(const CaughtError& e);

}  // namespace atx

// Defines extern "C" Datum name(PG_FUNCTION_ARGS) calling `Datum body(FunctionCallInfo)`.
// body is plain-C-style code (see above) and may ereport directly.
#define ATX_ENTRY(name, body)                \
    extern "C" {                             \
    PG_FUNCTION_INFO_V1(name);               \
    }                                        \
    extern "C" Datum name(PG_FUNCTION_ARGS)  \
    {                                        \
        atx::CaughtError caught_;            \
        try {                                \
            return body(fcinfo);             \
        } catch (...) {                      \
            atx::capture_exception(caught_); \
        }                                    \
        atx::raise_caught(caught_);          \
    }
