// Included last by every file of common/: this code is shared by the extension and the applier
// and must stay free of PostgreSQL's headers (their macros and C linkage would leak into the
// applier, and an ereport inside would longjmp through C++ frames).
#pragma once

#if defined(PG_VERSION_NUM) || defined(POSTGRES_H)
#error "common/ is pure C++: it must not include PostgreSQL server headers"
#endif
