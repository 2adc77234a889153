"""The bench's results as a terminal table and as Markdown tables for docs/benchmarks.md.

A failed point is shown where it happened ("failed"), and every contender that failed gets one
line naming the first client count it failed at and the server's error.
"""

STATES = (("stopped", "applier stopped (the caller's own cost)"),
          ("running", "applier running (what users live with)"))


ORDER = ("plain INSERT", "atx_log, commit", "atx_log, rollback", "atx_exec", "dblink",
         "pg_background result", "pg_background detach")


def ordered(sweep):
    """Contenders in a fixed order (pg_atx next to its baselines, each peer's settings together)."""
    rank = lambda n: ([i for i, p in enumerate(ORDER) if n.startswith(p)] or [len(ORDER)])[0]
    return sorted(sweep.items(), key=lambda kv: (rank(kv[0]), -len(kv[0]), kv[0]))


def fmt_rate(v):
    return "-" if v is None else f"{v:,.0f}"


def fmt_ms(v):
    return "-" if v is None else (f"{v:.3f}" if v < 10 else f"{v:.1f}")


def failure_notes(sweep):
    """One line per failing contender: first failure, its error, what succeeded before it."""
    notes = []
    for name, points in ordered(sweep):
        failed = [(int(c), p) for c, p in points.items() if not p["ok"]]
        if not failed:
            continue
        failed.sort()
        c, p = failed[0]
        more = [str(x) for x, _ in failed[1:]]
        before = (f"at least {p['calls_before_error']:,} before the first error" if p["calls_before_error"]
                  else "a client failed on its first call")
        notes.append((name, f"failed at {c} client{'s' if c > 1 else ''}: {p['error']} "
                            f"({p['clients_aborted']} of {c} clients aborted; {p['calls']:,} calls succeeded, "
                            f"{before})" + (f"; failed again at {', '.join(more)} clients" if more else "")))
    return notes


def cell(p, key, fmt):
    """A point's value; "!" marks a failed point (the value is that of the calls that succeeded)."""
    if p is None:
        return "n/a"
    return fmt(p[key]) + ("" if p["ok"] else "!")


def print_sweep(r):
    clients = r["config"]["clients"]
    for state, title in STATES:
        sweep = r["sweep"].get(state)
        if not sweep:
            continue
        print(f"\nLoad sweep, {title}: {r['config']['seconds_per_point']} s per point, pgbench -l")
        for key, label, fmt in (("calls_per_s", "calls/s", fmt_rate), ("median_ms", "median ms", fmt_ms),
                                ("p95_ms", "p95 ms", fmt_ms), ("p99_ms", "p99 ms", fmt_ms)):
            print(f"  {label:<46}" + "".join(f"{c:>11}" for c in clients))
            for name, points in ordered(sweep):
                print(f"  {name:<46}" + "".join(f"{cell(points.get(str(c)), key, fmt):>11}" for c in clients))
        notes = failure_notes(sweep)
        if notes:
            print("  (! = failed: some clients aborted; the value is that of the calls that succeeded; "
                  "n/a = not run)")
        for name, note in notes:
            print(f"  ! {name}: {note}")


def print_all(r):
    m = r["machine"]
    print(f"\npg_atx benchmark ({r['mode']}), {m['server']}, {m['cpus']} CPUs, {m['date']}, commit {m['commit']}")
    c = r["config"]
    print(f"pg_background: {c['pg_background']}")
    print_sweep(r)
    if "drain" in r:
        d = r["drain"]
        print(f"\nApplier drain: {d['messages']} messages applied in {d['apply_seconds']:.2f} s = "
              f"{d['messages_per_s']:.0f}/s ({d['messages_per_s_incl_startup']:.0f}/s counting applier startup; "
              f"peak RSS {d['applier_peak_rss_kb']} kB)")
    for rate, e in r.get("e2e", {}).items():
        if isinstance(e, dict):
            print(f"End-to-end at {rate}/s offered ({e['achieved_per_s'] or 0:.0f}/s achieved): median "
                  f"{e['median_ms']:.2f} ms, p99 {e['p99_ms']:.2f} ms, max {e['max_ms']:.2f} ms")
    if "tpcb" in r:
        t = r["tpcb"]
        print(f"TPC-B tps: no slot {t['no slot']:.0f}, slot idle {t['slot, idle']:.0f}, slot + 1000 msg/s "
              f"{t['slot, 1000 msg/s']:.0f}; spill bytes {t['spill_bytes']}, WAL retained {t['wal_retained_bytes']} B")
    if "audit" in r:
        au = r["audit"]
        print(f"Audit trigger, bulk UPDATE of {au['rows']} rows (rolled back): atx statement-level "
              f"{au['atx_statement_rows_per_s']:.0f} rows/s in {au['messages']} messages "
              f"({au['atx_applied_rows_per_s']:.0f} rows/s until applied); plain-table row trigger "
              f"{au['plain_trigger_rows_per_s']:.0f} rows/s")
    if "row_trigger" in r:
        print(f"\nRow trigger, one INSERT of {c['trigger_rows']:,} rows, AFTER INSERT FOR EACH ROW")
        for name, t in r["row_trigger"].items():
            if t["ok"]:
                print(f"  {name:<54} {t['seconds']:8.3f} s {t['rows_per_s']:10,.0f} rows/s  "
                      f"autonomous rows {t['autonomous_rows']:,}")
            else:
                print(f"  {name:<54} failed: {t['error']} ({t['autonomous_rows']:,} autonomous rows written "
                      f"before the statement failed)")
    print("\nConcurrency, synchronous standbys, validation, state size")
    for name, v in r.get("pending", {}).items():
        print(f"  {name}: " + (v["skipped"] if "skipped" in v else ""))
        if "skipped" not in v:
            for line in pending_lines(name, v):
                print("    " + line)
    if "isolation" in r:
        iso = r["isolation"]
        print(f"\nIsolation under attack: {iso['window_s']} s per pattern, message limit {iso['message_limit_ms']} ms, "
              f"victim {iso['victim_rate_per_s']} messages/s")
        for pattern, check, measured, target, ok in isolation_verdicts(iso):
            print(f"  {'ok  ' if ok else 'MISS'} {pattern}: {check} {measured} (target {target})")
    if "targets" in r:
        print("\nSpeed targets (issue 23), measured in this run:")
        import bench_targets
        for check, measured, target, ok in bench_targets.verdicts(r["targets"]):
            print(f"  {'ok  ' if ok else 'MISS'} {check}: {measured} (target {target})")
        for what, value in bench_targets.references(r["targets"]):
            print(f"  ref  {what}: {value}")
    print("\nRatios")
    for k, v in r["ratios"].items():
        unit = " ms" if k.endswith(", ms") else "x"
        print(f"  {k:<66} " + (f"{v:8.2f}{unit}" if isinstance(v, (int, float)) else str(v)))


def isolation_verdicts(iso):
    import bench_isolation
    return bench_isolation.verdicts(iso)


def point_text(p):
    if not p["ok"]:
        return f"failed: {p['error']}"
    return f"median {fmt_ms(p['median_ms'])} ms, p99 {fmt_ms(p['p99_ms'])} ms, {fmt_rate(p['calls_per_s'])} calls/s"


def pending_lines(name, v):
    """The measured figures of one coming feature, as text lines."""
    if name.startswith("drain by apply sessions"):
        return [f"{k} session(s): {d['messages_per_s'] or 0:,.0f} messages/s "
                f"(8-client emit {d['emit_8_clients_per_s'] or 0:,.0f}/s)" for k, d in v.items()]
    if name.startswith("end-to-end with a blocked message"):
        return [f"{case}: median {d['median_ms']:.2f} ms, p99 {d['p99_ms']:.2f} ms, max {d['max_ms']:.2f} ms"
                + ("" if d.get("blocked_message_applied", True) else " (blocked message NOT applied)")
                for case, d in v.items()]
    if name.startswith("atx_log at each synchronous_commit"):
        return [f"{case}, synchronous_commit={level}: {contender}: {point_text(p)}"
                for case, levels in v.items() if isinstance(levels, dict)
                for level, contenders in levels.items() for contender, p in contenders.items()]
    if name.startswith("atx.validate"):
        return [f"atx.validate={setting}, {c} client(s): {point_text(p)}"
                for setting, by in v.items() for c, p in by.items()]
    if name.startswith("applier state size"):
        return [f"{v['messages']:,} messages: {v['bytes'] / 1e6:.1f} MB ({v['bytes_per_message']:.0f} B/message; "
                f"SST {v['by_kind']['sst'] / 1e6:.1f} MB, WAL {v['by_kind']['wal'] / 1e6:.1f} MB)"]
    return []


def markdown(r):
    """Markdown tables of the sweep and the row triggers, to paste into docs/benchmarks.md."""
    clients = r["config"]["clients"]
    out = []
    for state, title in STATES:
        sweep = r["sweep"].get(state)
        if not sweep:
            continue
        out.append(f"#### {title[0].upper()}{title[1:]}\n")
        out.append("| contender | " + " | ".join(f"{c} client{'s' if c > 1 else ''}" for c in clients) + " |")
        out.append("|---|" + "---|" * len(clients))
        for name, points in ordered(sweep):
            cells = []
            for c in clients:
                p = points.get(str(c))
                if p is None:
                    cells.append("not run")
                elif p["ok"]:
                    cells.append(f"{fmt_rate(p['calls_per_s'])}/s<br>{fmt_ms(p['median_ms'])} / "
                                 f"{fmt_ms(p['p95_ms'])} / {fmt_ms(p['p99_ms'])}")
                else:
                    cells.append(f"**failed** ({p['clients_aborted']}/{c} aborted)<br>{p['calls']:,} calls ok")
            out.append(f"| {name} | " + " | ".join(cells) + " |")
        out.append("\nCells: calls/s, then median / p95 / p99 latency in ms.\n")
        for name, note in failure_notes(sweep):
            out.append(f"- {name}: {note}")
        out.append("")
    if "row_trigger" in r:
        out.append(f"#### Row trigger, {r['config']['trigger_rows']:,} rows\n")
        out.append("| trigger | time | rows/s | autonomous rows |")
        out.append("|---|---|---|---|")
        for name, t in r["row_trigger"].items():
            if t["ok"]:
                out.append(f"| {name} | {t['seconds']:.3f} s | {t['rows_per_s']:,.0f} | {t['autonomous_rows']:,} |")
            else:
                out.append(f"| {name} | **failed**: {t['error']} | - | {t['autonomous_rows']:,} before the failure |")
        out.append("")
    if "isolation" in r:
        iso = r["isolation"]
        out.append(f"#### Isolation under attack ({iso['window_s']} s per pattern, message limit "
                   f"{iso['message_limit_ms'] / 1000:g} s)\n")
        out.append("| pattern | victim p99 / max, ms (plain; nested; non-atomic) | hostile final | hostile run to final, "
                   "max | slot lag, max | apply backend RSS, max |")
        out.append("|---|---|---|---|---|---|")
        for name, p in iso["patterns"].items():
            v = "; ".join(f"{p['victim'][k]['p99_ms']:.1f} / {p['victim'][k]['max_ms']:.0f}"
                          for k in ("log", "nested", "nonatomic") if k in p["victim"])
            out.append(f"| {name} | {v} | {p['hostile_final']}/{p['hostile_messages']} | "
                       f"{p['hostile_run_to_final_max_s']} s | {p['slot_lag_max_s']} s | "
                       f"{p['apply_backend_rss_max_mb']} MB |")
        out.append("")
    return "\n".join(out) + "\n"
