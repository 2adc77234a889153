"""Everything the checks assume beyond what docs/applier.md, docs/exec.md and issue 21 promise.

Kept in one place so that a change in the apply path that keeps its promises changes only this
file. Each assumption says where it comes from.
"""
import re
import uuid

# --- bounds (issue 21, invariant 1: "within the message limit plus a small margin") -------------
MARGIN_S = 10.0


class Bounds:
    """Seconds by which a message must be final. The applier's own options decide them: a
    transiently failing message may be retried for --max-retry-seconds (docs/applier.md, step 5),
    so its bound is the limit plus that budget plus the margin. A server restart (the crash-killer
    SIGKILLs a backend: the postmaster restarts all of them) adds RESTART_S to everything in flight."""
    RESTART_S = 10.0

    def __init__(self, limit_ms, max_retry_s, max_attempts, max_backend_losses, prune_interval_ms,
                 status_interval_ms):
        self.limit = limit_ms / 1000.0
        self.attempts = max_attempts
        self.retry = float(max_retry_s)
        self.losses = max_backend_losses
        self.prune = prune_interval_ms / 1000.0
        self.status = status_interval_ms / 1000.0

    def message(self):
        return self.limit + self.retry + MARGIN_S

    def poison(self):
        """A message that loses its backend each time it runs: dead-lettered after
        --max-backend-losses losses while it runs alone (docs/applier.md, "Poison messages"),
        each loss a server restart."""
        return (self.losses + 1) * (self.limit + self.RESTART_S) + MARGIN_S

    def victim(self):
        """Invariant 4: a victim message, which never fails by itself, is applied within this."""
        return self.limit + MARGIN_S

    def slot_slack(self):
        """The slot is confirmed at the next status update after the handling is durable."""
        return 2 * self.status + 1.0

    def horizon_slack(self):
        return self.prune + 2 * self.status + 1.0


# --- message identity (docs/message-format.md) -------------------------------------------------
def lane_pid(lane):
    """The backend pid in a session lane: docs/message-format.md says the lane is "the caller's
    backend session (database oid, pid, backend start)"; read as 4 + 4 + 8 bytes."""
    b = uuid.UUID(lane).bytes
    return int.from_bytes(b[4:8], "big")


# --- statuses (docs/design.md, "Tables"; docs/applier.md "No silent loss") ----------------------
FINAL_APPLIED = ("applied", "duplicate", "dead")     # atx.applied.status values that are final


# --- settings (docs/usage.md, "As whom, and with which settings") --------------------------------
# Not carried by a message: the apply session's own values show through (docs/design.md counts the
# pg_atx settings among them; the code carries some today). The victim's statements are held to
# what its quiet warm-up saw for these, and to its own session's values for all others (carried
# when changed, the four always carried, the server's defaults otherwise: "settings are set per
# message and undone after it", docs/applier.md).
NOT_CARRIED = {"atx.validate", "atx.exec_timeout", "atx.exec_on_abandon", "atx.allow_in_read_only",
               "role", "session_authorization", "is_superuser", "transaction_isolation", "transaction_read_only",
               "transaction_deferrable", "default_transaction_isolation", "default_transaction_read_only",
               "default_transaction_deferrable", "application_name", "client_encoding", "statement_timeout",
               "lock_timeout", "idle_in_transaction_session_timeout", "idle_session_timeout", "transaction_timeout",
               "synchronous_commit", "client_min_messages", "atx.capture_gucs"}


# --- what an atx_exec caller may be told (docs/exec.md, "Errors in the caller") ----------------
# SQLSTATEs of the waits and verdicts that are not the statement's own error: atx.exec_timeout
# (55P03), a cancel or the message limit (57014), a deadlock with the caller (40P01), a message
# that kept killing its backend (08006), a non-atomic one in doubt (40003), a payload that does not
# authenticate (28000), the caller role dropped (42704).
VERDICT_SQLSTATES = {"55P03", "57014", "40P01", "08006", "40003", "28000", "42704"}

_CANCELLED = re.compile(r"is cancelled: it will not be applied")
_WILL_APPLY = re.compile(r"will still be applied|it is applied|goes on, and is applied")
_ID = re.compile(r"pg_atx message ([0-9a-f-]{36})")


def exec_fate(detail):
    """What docs/exec.md says the caller is told when it stops waiting: 'cancelled' (never
    applied), 'applies' (applied or dead-lettered later), or None (not said)."""
    if not detail:
        return None
    if _CANCELLED.search(detail):
        return "cancelled"
    if _WILL_APPLY.search(detail):
        return "applies"
    return None


def notification_reveals(payload, victim_ids):
    """Issue 21, invariant 5: a notification carries nothing other roles may not know. Assumed here:
    another role's message id is such a thing (today's payload is exactly the id)."""
    return any(i in payload for i in victim_ids)


def message_id_in(text):
    m = _ID.search(text or "")
    return m.group(1) if m else None


# --- the operator (issue 21, invariant 2: "an operator can always dead-letter or discard a message
# by id or LSN"): the function docs/security.md lists for the applier role's own verdicts.
OPERATOR_DEAD_LETTER_SQL = "SELECT atx.dead_letter_message(%s::pg_lsn, 'operator', 1, now())"
# The output plugin's text format (docs/message-format.md) through the SQL interface; a line that
# says a genuine message did not decode or authenticate is as wrong as an error.
TEXT_FORMAT_SQL = ("SELECT count(*), count(*) FILTER (WHERE data LIKE '%% undecodable %%' "
                   "OR data LIKE '%% unauthenticated %%') "
                   "FROM pg_logical_slot_get_changes('fz_text', NULL, NULL, 'format', 'text')")


# --- the applier's log (docs/operations.md: one event per line, key=value) ---------------------
_BATCH_FAILED = re.compile(rb"event=batch_failed .*?first_lsn=(\S+)")
_LINE_START = re.compile(rb"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")


def batch_failures(log_bytes):
    """first_lsn -> count of event=batch_failed lines."""
    out = {}
    for m in _BATCH_FAILED.finditer(log_bytes):
        out[m.group(1).decode()] = out.get(m.group(1).decode(), 0) + 1
    return out


def forged_lines(log_bytes):
    """Lines that are not one event: raw line separators a Unicode-aware reader splits on (NEL,
    U+2028, U+2029), control bytes, or a line that does not start with the timestamp."""
    bad = []
    text = log_bytes.decode("utf-8", "replace")
    for sep in ("\u0085", "\u2028", "\u2029"):
        if sep in text:
            bad.append(f"raw U+{ord(sep):04X} in the log")
    for line in log_bytes.split(b"\n"):
        if not line:
            continue
        if any(c < 0x20 and c != 0x09 for c in line) or 0x7f in line:
            bad.append("control byte in: " + line[:200].decode("utf-8", "replace"))
        elif not _LINE_START.match(line):
            bad.append("line without an event: " + line[:200].decode("utf-8", "replace"))
    return bad


# --- apply backends (docs/applier.md, "Reading its state") -------------------------------------
# All client backends of the applier's role: its apply, nested, control and prune sessions (found by
# role, not by application_name, which a statement may change).
APPLY_BACKENDS_SQL = ("SELECT pid, state, application_name FROM pg_stat_activity WHERE usename = %s "
                      "AND backend_type = 'client backend'")
RSS_BOUND_MB = 256          # issue 21, acceptance: apply backend RSS <= 256 MB each
