// Reading a pg_atx message back from this server's own WAL: the provenance check.
//
// The applier names a message only by the LSN where its WAL record starts; the payload that
// runs is the one read here. A message is accepted only if, at exactly that LSN,
//   - there is a genuine record boundary: the reader walks from the first record of the WAL
//     page (whose header says where it starts), so a fake record hidden inside another
//     record's data (a user's INSERT, another logical message) is never reached;
//   - the record is a non-transactional logical message of this database with prefix pg_atx;
//   - it carries the pg_atx replication origin, which only atx_log sets (setting an origin
//     from SQL takes superuser or an explicit grant, and the applier role has neither).
// So a role that can call the apply functions (atx_applier) still cannot get anything executed
// that atx_log did not write, and cannot alter a byte of it. Replays are refused elsewhere
// (atx.applied, applied_log.cc). Plain C style (see pg_guard.h).
#include "wal_message.h"

#include "message.h"

extern "C" {
#include "access/xlog_internal.h"
#include "access/xlogreader.h"
#include "access/xlogutils.h"
#include "access/rmgr.h"
}

static XLogReaderState* reader = NULL;
static ReadLocalXLogPageNoWaitPrivate reader_private;

static XLogReaderState* get_reader(void)
{
    static XLogReaderRoutine routine;
    MemoryContext old;

    if (reader != NULL)
        return reader;
    routine.page_read = read_local_xlog_page_no_wait;
    routine.segment_open = wal_segment_open;
    routine.segment_close = wal_segment_close;
    old = MemoryContextSwitchTo(TopMemoryContext);
    reader = XLogReaderAllocate(wal_segment_size, NULL, &routine, &reader_private);
    MemoryContextSwitchTo(old);
    if (reader == NULL)
        ereport(ERROR, (errcode(ERRCODE_OUT_OF_MEMORY), errmsg("out of memory allocating a WAL reader")));
    return reader;
}

static bool refuse(char** why, const char* fmt, XLogRecPtr lsn)
{
    if (why != NULL)
        *why = psprintf(fmt, ATX_LSN_ARGS(lsn));
    return false;
}

// The record the reader just read is a pg_atx message of this database that atx_log wrote.
static bool genuine(XLogReaderState* r, XLogRecPtr lsn, char** why)
{
    xl_logical_message* xlrec;

    if (XLogRecGetRmid(r) != RM_LOGICALMSG_ID || (XLogRecGetInfo(r) & ~XLR_INFO_MASK) != XLOG_LOGICAL_MESSAGE)
        return refuse(why, "the WAL record at %X/%X is not a logical message", lsn);
    xlrec = (xl_logical_message*)XLogRecGetData(r);
    if (xlrec->transactional || xlrec->dbId != MyDatabaseId || xlrec->prefix_size != strlen(atx::kMessagePrefix) + 1 ||
        strcmp(xlrec->message, atx::kMessagePrefix) != 0)
        return refuse(why, "the logical message at %X/%X is not a pg_atx message of this database", lsn);
    // Checked last: the origin is what only atx_log can set.
    if (XLogRecGetOrigin(r) == InvalidRepOriginId || XLogRecGetOrigin(r) != atx_emit_origin_id(false))
        return refuse(why, "the logical message at %X/%X was not written by atx_log (replication origin)", lsn);
    return true;
}

bool atx_read_wal_message(XLogRecPtr lsn, char** payload, size_t* len, char** why)
{
    XLogReaderState* r;
    XLogRecPtr found;
    XLogRecord* rec;
    char* errormsg = NULL;
    xl_logical_message* xlrec;
    TimeLineID tli;

    if (RecoveryInProgress())
        ereport(ERROR, (errcode(ERRCODE_READ_ONLY_SQL_TRANSACTION),
                        errmsg("pg_atx messages cannot be applied during recovery")));
    if (lsn == InvalidXLogRecPtr || lsn % XLOG_BLCKSZ < SizeOfXLogShortPHD)
        return refuse(why, "no WAL record starts at %X/%X", lsn);
    if (lsn >= GetFlushRecPtr(&tli))
        return refuse(why, "%X/%X is not in the flushed WAL of this server", lsn);

    r = get_reader();
    reader_private.end_of_wal = false;
    // The reader (re)allocates its buffers in the current context: they must outlive this call.
    MemoryContext caller = MemoryContextSwitchTo(TopMemoryContext);
    found = XLogFindNextRecord(r, lsn);
    if (found == InvalidXLogRecPtr) {
        MemoryContextSwitchTo(caller);
        ereport(ERROR, (errcode(ERRCODE_UNDEFINED_FILE),
                        errmsg("could not read the WAL at %X/%X to verify a pg_atx message", ATX_LSN_ARGS(lsn)),
                        errdetail("The WAL may have been removed; the slot should have kept it.")));
    }
    if (found != lsn) {
        MemoryContextSwitchTo(caller);
        return refuse(why, "no WAL record starts at %X/%X (not a record boundary)", lsn);
    }
    rec = XLogReadRecord(r, &errormsg);
    MemoryContextSwitchTo(caller);
    if (rec == NULL)
        ereport(ERROR,
                (errcode(ERRCODE_DATA_CORRUPTED), errmsg("could not read the WAL record at %X/%X: %s",
                                                         ATX_LSN_ARGS(lsn), errormsg ? errormsg : "unknown error")));
    if (!genuine(r, lsn, why))
        return false;
    xlrec = (xl_logical_message*)XLogRecGetData(r);
    *len = xlrec->message_size;
    *payload = (char*)palloc(xlrec->message_size + 1);
    memcpy(*payload, xlrec->message + xlrec->prefix_size, xlrec->message_size);
    (*payload)[xlrec->message_size] = '\0';
    return true;
}

#define ATX_SCAN_MAX_BYTES ((uint64)256 * 1024 * 1024)

void atx_scan_wal_messages(XLogRecPtr from, XLogRecPtr upto, int max, List** found, XLogRecPtr* next)
{
    XLogReaderState* r;
    XLogRecPtr start;
    TimeLineID tli;

    *found = NIL;
    *next = from;
    if (RecoveryInProgress())
        ereport(ERROR, (errcode(ERRCODE_READ_ONLY_SQL_TRANSACTION),
                        errmsg("pg_atx messages cannot be looked for during recovery")));
    upto = Min(upto, GetFlushRecPtr(&tli));
    if (from >= upto)
        return;
    r = get_reader();
    reader_private.end_of_wal = false;
    MemoryContext caller = MemoryContextSwitchTo(TopMemoryContext);
    start = XLogFindNextRecord(r, from);
    MemoryContextSwitchTo(caller);
    if (start == InvalidXLogRecPtr) {
        if (reader_private.end_of_wal)
            return;  // no whole record after from yet
        ereport(ERROR, (errcode(ERRCODE_UNDEFINED_FILE),
                        errmsg("could not read the WAL at %X/%X to look for pg_atx messages", ATX_LSN_ARGS(from)),
                        errdetail("The WAL may have been removed; the slot should have kept it.")));
    }
    for (;;) {
        char* errormsg = NULL;
        caller = MemoryContextSwitchTo(TopMemoryContext);
        XLogRecord* rec = XLogReadRecord(r, &errormsg);
        MemoryContextSwitchTo(caller);
        if (rec == NULL) {
            if (reader_private.end_of_wal)
                break;
            ereport(ERROR, (errcode(ERRCODE_DATA_CORRUPTED),
                            errmsg("could not read the WAL after %X/%X: %s", ATX_LSN_ARGS(*next),
                                   errormsg ? errormsg : "unknown error")));
        }
        start = r->ReadRecPtr;
        // Bounded work per call: the caller goes on from *next.
        if (start >= upto || start - from >= ATX_SCAN_MAX_BYTES) {
            *next = start;
            break;
        }
        *next = r->EndRecPtr;
        if (genuine(r, start, NULL)) {
            XLogRecPtr* p = (XLogRecPtr*)palloc(sizeof(XLogRecPtr));
            *p = start;
            *found = lappend(*found, p);
            if (list_length(*found) >= max)
                break;
        }
    }
}
