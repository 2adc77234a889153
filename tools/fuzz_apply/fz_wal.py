"""Every pg_atx message written to the WAL, as the server itself knows it.

The fuzzer does not trust what the attackers' clients saw (atx_log may raise after writing, a
nested emit returns its id to user code only): it reads the WAL (pg_walinspect, through
fz_h.messages, which asks atx.message_at for each logical message so that only records atx_log
wrote count) and decodes the head of each payload as docs/message-format.md describes it. That
gives every message, nested ones included, with its id, lane, depth, role and emit time.
"""
import datetime
import struct
import uuid

PG_EPOCH = datetime.datetime(2000, 1, 1, tzinfo=datetime.timezone.utc)
HEAD_BYTES = 4096          # enough for the header and the start of the statement
FLAG_KEY, FLAG_WAITED = 1, 2


class Msg:
    """One message: what its payload says and what the poller saw become of it."""
    __slots__ = ("lsn", "id", "flags", "lane", "depth", "role_oid", "role", "session_user", "emitted",
                 "settings", "statement", "seen_at", "final_at", "status", "sqlstate", "error", "round",
                 "origin", "bound", "run_start")

    def __init__(self, lsn, head, seen_at):
        self.lsn = lsn
        self.seen_at = seen_at
        self.final_at = None    # when the poller first saw it final (time.time())
        self.status = None      # applied | duplicate | dead | pruned (below the horizon, record gone)
        self.sqlstate = self.error = None
        self.round = None
        self.origin = None      # what the fuzzer emitted it for (fz_round), when known
        self.bound = None
        self.run_start = None   # when its run began, as the poller saw it (fz_poller)
        parse_head(self, head)

    @property
    def waited(self):
        return bool(self.flags & FLAG_WAITED)

    def describe(self):
        st = (self.statement or "")[:160].replace("\n", " ")
        return f"{self.id} lsn={self.lsn} role={self.role} depth={self.depth} statement={st!r}"


class _Reader:
    def __init__(self, b):
        self.b, self.p = b, 0

    def take(self, n):
        if self.p + n > len(self.b):
            raise ValueError("short payload head")
        v = self.b[self.p:self.p + n]
        self.p += n
        return v

    def u8(self):
        return self.take(1)[0]

    def u16(self):
        return struct.unpack(">H", self.take(2))[0]

    def u32(self):
        return struct.unpack(">I", self.take(4))[0]

    def u64(self):
        return struct.unpack(">Q", self.take(8))[0]

    def i64(self):
        return struct.unpack(">q", self.take(8))[0]

    def str16(self):
        return self.take(self.u16()).decode("utf-8", "replace")

    def str32_head(self):
        n = self.u32()
        return self.b[self.p:self.p + n].decode("utf-8", "replace")


def parse_head(m, head):
    """Fills m from the payload's head (format version 2 or 3: the same head; in 3 the session user
    is the principal). The statement may be cut at HEAD_BYTES."""
    r = _Reader(bytes(head))
    if r.take(3) != b"ATX" or r.u8() not in (2, 3):
        raise ValueError("not a version 2 or 3 pg_atx payload")
    m.flags = r.u8()
    m.id = str(uuid.UUID(bytes=r.take(16)))
    m.lane = str(uuid.UUID(bytes=r.take(16)))
    m.depth = r.u8()
    r.u32()                                   # database oid
    m.role_oid = r.u32()
    m.role = r.str16()
    r.u32()
    m.session_user = r.str16()
    r.u64()                                   # caller xid
    m.emitted = (PG_EPOCH + datetime.timedelta(microseconds=r.i64())).timestamp()
    m.settings = {}
    m.statement = None
    try:
        for _ in range(r.u16()):
            name = r.str16()
            value = r.take(r.u32()).decode("utf-8", "replace")
            r.u8()
            m.settings[name] = value
        m.statement = r.str32_head()
    except ValueError:
        pass                                  # a head cut inside the settings: fine


class WalScanner:
    """Reads the messages written since the last call (superuser connection)."""

    def __init__(self, start_lsn):
        self.next_lsn = start_lsn

    def scan(self, cur, now):
        cur.execute("SELECT pg_current_wal_flush_lsn()")
        end = cur.fetchone()[0]
        if lsn_int(end) <= lsn_int(self.next_lsn):
            return []
        cur.execute("SELECT lsn::text, payload FROM fz_h.messages(%s, %s, %s)", (self.next_lsn, end, HEAD_BYTES))
        out = []
        for lsn, payload in cur.fetchall():
            try:
                out.append(Msg(lsn, payload, now))
            except ValueError:
                continue
        self.next_lsn = end
        return out


def lsn_int(s):
    hi, lo = s.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def current_lsn(cur):
    cur.execute("SELECT pg_current_wal_insert_lsn()::text")
    return cur.fetchone()[0]

