"""The ``rehydrate`` command: version, verify, inspect, dump, digest, compact,
repair, plan, replay, migrate (status, apply, rollback, confirm), bench,
follow, promote, status (handoff_cli.py), restore, archive ls and verify of
an archive URI (archive_cli.py).

Exit codes: 0 clean (a tolerated torn tail is a warning), 1 damage or a failed
check, 2 usage error or unreadable input. Every command takes ``--json``.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import os
import sys

from .exitcodes import EXIT_DAMAGE, EXIT_OK, EXIT_USAGE


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse exits 2 too; keep its message short
        self.print_usage(sys.stderr)
        print(f"rehydrate: error: {message}", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def _progress_bar(desc: str, enabled: bool):
    """A tqdm bar over bytes, or None; tqdm is imported only when shown."""
    if not enabled or not sys.stderr.isatty():
        return None, None
    from tqdm import tqdm

    bar = tqdm(total=0, unit="B", unit_scale=True, desc=desc, leave=False, file=sys.stderr)

    def update(done, total):
        bar.total = total
        bar.n = done
        bar.refresh()

    return bar, update


def _jsonable(v):
    """Values as JSON: bytes become {"b64": ...}; map keys become strings."""
    if isinstance(v, (bytes, bytearray)):
        return {"b64": base64.b64encode(bytes(v)).decode("ascii")}
    if isinstance(v, dict):
        return {(k if isinstance(k, str) else json.dumps(_jsonable(k))): _jsonable(x)
                for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return {"float": repr(v)}
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    return {"repr": repr(v)}  # msgpack ext types and the like


def _load_user_tables(spec: str) -> dict:
    """The ``tables`` mapping (as ``Store.open(tables=...)`` takes) of module
    ``spec``, imported from the current directory or sys.path; ConfigError
    if it cannot be imported or has none."""
    import importlib

    from .errors import ConfigError
    from .kinds import resolve_kinds

    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(spec)
    except Exception as e:  # noqa: BLE001 - any import failure is the module's
        raise ConfigError(f"--tables: cannot import {spec!r}: {type(e).__name__}: {e}",
                          reason="needs_class") from e
    tables = getattr(module, "tables", None)
    if not isinstance(tables, dict):
        raise ConfigError(f"--tables: module {spec!r} has no dict named 'tables' "
                          "(table name -> DictTable, NumericTable(...) or StateType subclass)",
                          reason="needs_class")
    resolve_kinds(tables)  # ConfigError for anything tables= would refuse
    return tables


def _user_tables(args) -> dict:
    spec = getattr(args, "tables", None)
    return _load_user_tables(spec) if spec else {}


def _user_classes(args) -> dict:
    """The StateType classes --tables gives (readers need nothing else)."""
    from .catalog import state_classes

    return state_classes(_user_tables(args))


def _open_tables(args, command: str) -> dict:
    """``tables=`` for a writer's open of args.dir: the kinds on disk, the
    classes from --tables; ConfigError (exit 2) for a custom table without one."""
    from .catalog import open_tables
    from .manifest import check_store_dir

    check_store_dir(args.dir)
    return open_tables(args.dir, _user_tables(args), f"rehydrate {command}")


def _unavailable(table_digests) -> dict:
    """{name: why} of the tables a deep verify could not digest."""
    return {name: "a custom table: no content digest is defined for it (docs/tables.md)"
            for name, dg in (table_digests or {}).items() if dg is None}


def _cmd_version(args) -> int:
    from . import __version__
    from ._backend import core

    c = core()
    info = {"version": __version__, "core": c.IMPLEMENTATION,
            "crc32c": c.crc32c_backend(), "python": sys.version.split()[0]}
    if args.json:
        print(json.dumps(info))
    else:
        print(f"rehydrate {info['version']} (core: {info['core']}, crc32c: {info['crc32c']}, "
              f"python {info['python']})")
    return EXIT_OK


def _print_problems(problems) -> None:
    for p in problems:
        lsn = f" LSN {p['lsn']}" if p.get("lsn") is not None else ""
        off = f" @{p['offset']}" if p.get("offset") is not None else ""
        print(f"  {p['kind']}: {p['path']}{off}{lsn}: {p['detail']} "
              f"({p['bytes']} bytes, {p['action']})")


def _cmd_verify(args) -> int:
    from .archive_cli import cmd_verify_archive, is_uri
    from .verify import is_snapshot_dir, verify

    if is_uri(args.dir):
        return cmd_verify_archive(args)
    bar, update = _progress_bar("verify", not args.json)
    try:
        report = verify(args.dir, recovery=args.recovery, deep=args.deep, progress=update,
                        classes=_user_classes(args))
    finally:
        if bar is not None:
            bar.close()
    d = report.as_dict()
    snapshots = d.get("snapshots") or []
    if args.json:
        print(json.dumps({
            "ok": d["ok"], "last_lsn": d["last_lsn"], "records": d["records"],
            "mode": d["mode"], "frames": d["frames"], "bytes": d["bytes_read"],
            "segments": d["segments"], "snapshots": snapshots,
            "problems": [{k: p[k] for k in ("kind", "path", "offset", "lsn", "detail",
                                              "bytes", "lsn_end", "action")}
                         for p in d["problems"]],
            **({"digest": d.get("digest"), "tables": d.get("table_digests"),
                "unavailable": _unavailable(d.get("table_digests") or {})} if args.deep else {}),
        }))
    else:
        status = "OK" if d["ok"] else "DAMAGED"
        if is_snapshot_dir(args.dir):
            tables = snapshots[0]["tables"] if snapshots else []
            print(f"{status}: {args.dir}: snapshot at LSN {d['last_lsn']}, {len(tables)} "
                  f"tables, {sum(s['bytes'] for s in snapshots)} bytes")
        else:
            print(f"{status}: {args.dir}: {len(d['segments'])} segments, {d['frames']} frames, "
                  f"{d['records']} records, last LSN {d['last_lsn']}, {d['bytes_read']} bytes; "
                  f"{len(snapshots)} snapshots, {sum(s['bytes'] for s in snapshots)} bytes")
        if args.deep:
            tables = d.get("table_digests") or {}
            print(f"digest {d.get('digest') or '-'}" + "".join(
                f"\n  {name}: {dg or '-'}" for name, dg in tables.items()))
            for name, why in _unavailable(tables).items():
                print(f"  (no digest for {name!r}: {why})")
        if d["problems"]:
            print("problems:")
            _print_problems(d["problems"])
    return EXIT_OK if d["ok"] else EXIT_DAMAGE


def _cmd_inspect(args) -> int:
    from .verify import inspect

    bar, update = _progress_bar("inspect", not args.json)
    try:
        info = inspect(args.dir, progress=update, classes=_user_classes(args))
    finally:
        if bar is not None:
            bar.close()
    if args.json:
        print(json.dumps(info))
        return EXIT_OK if info["ok"] else EXIT_DAMAGE
    span = "-" if info["last_lsn"] is None else f"{info['first_lsn']}..{info['last_lsn']}"
    print(f"{info['path']}: format {info['format']}, LSN {span}, "
          f"{info['records']} records, {info['wal_bytes']} WAL bytes")
    print("segments:")
    for s in info["segments"]:
        last = "-" if s["last_lsn"] is None else s["last_lsn"]  # a segment with no good frame
        print(f"  {os.path.basename(s['path'])}  LSN {s['first_lsn']}..{last}  "
              f"{s['frames']} frames  {s['records']} records  {s['bytes']} bytes")
    print("tables:")
    for t in info["tables"]:
        keys = "unknown number of" if t["keys"] is None else t["keys"]
        mem = "" if t["memory_bytes"] is None else f", {t['memory_bytes']} bytes in memory"
        print(f"  {t['name']} (id {t['id']}, {t['kind']}): {keys} keys{mem}")
    if info["snapshots"]:
        print("snapshots:")
        for sn in info["snapshots"]:
            print(f"  LSN {sn['lsn']}: {sn['bytes']} bytes, {len(sn['tables'])} tables, "
                  f"digest {sn['digest'] or '-'}" + ("" if sn["listed"] else " (not in MANIFEST)"))
    if info["offsets"]:
        print("source offsets:")
        for source, off in sorted(info["offsets"].items()):
            print(f"  {source}: {off}")
    if info["problems"]:
        print("problems:")
        _print_problems(info["problems"])
    return EXIT_OK if info["ok"] else EXIT_DAMAGE


def _cmd_dump(args) -> int:
    from .dump import dump_records

    ok = True
    out = sys.stdout
    for item in dump_records(args.dir, table=args.table, from_lsn=args.from_lsn,
                             to_lsn=args.to_lsn, recovery=args.recovery):
        if "problem" in item:
            p = item["problem"]
            ok = ok and p["action"] != "error"
            print(f"rehydrate dump: {p['kind']} in {p['path']} @{p['offset']}: {p['detail']}",
                  file=sys.stderr)
            continue
        item["key"] = _jsonable(item["key"])
        item["value"] = _jsonable(item["value"])
        out.write(json.dumps(item) + "\n")
    return EXIT_OK if ok else EXIT_DAMAGE


def _cmd_digest(args) -> int:
    from .digest import digest_dir

    info = digest_dir(args.dir, recovery=args.recovery, classes=_user_classes(args))
    if args.json:
        print(json.dumps({"digest": info["digest"], "tables": info["tables"],
                          "unavailable": info["unavailable"],
                          "last_lsn": info["last_lsn"], "ok": info["ok"]}))
    elif info["digest"] is not None:
        # One line, the digest alone, so scripts can compare it as is.
        print(info["digest"])
    else:
        # No state digest to compare: each table's instead ("-" for none),
        # and the exit code below says the digest asked for was not given.
        for name, dg in info["tables"].items():
            print(f"{name} {dg or '-'}")
    if info["problems"]:
        # stdout carries only the digest; what recovery dropped goes to stderr.
        for p in info["problems"]:
            print(f"rehydrate digest: {p['kind']} in {p['path']} @{p['offset']}: "
                  f"{p['detail']} ({p['bytes']} bytes, {p['action']})", file=sys.stderr)
    if not info["ok"]:
        return EXIT_DAMAGE
    if info["unavailable"]:
        print("rehydrate digest: no state digest: " + "; ".join(info["unavailable"].values())
              + "; the other tables' digests are given [no_digest]", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


def _cmd_repair(args) -> int:
    from .repair import repair, summary_line

    report = repair(args.dir, dry_run=args.dry_run)
    if args.json:
        print(json.dumps(report.as_dict()))
    else:
        print(summary_line(report))
        if report.problems:
            print("problems:")
            _print_problems(report.problems)
        for c in report.cut:
            where = f", whole segment kept as {c['evidence']}" if "evidence" in c else ""
            print(f"  cut {c['path']} at {c['offset']} ({c['bytes']} bytes){where}")
        for m in report.moved:
            print(f"  moved {m['path']} ({m['bytes']} bytes) to {m['to']}")
        for r in report.removed:
            print(f"  removed {r['path']} ({r['bytes']} bytes)")
    # A dry run that finds work exits 1 (damage found); otherwise the
    # directory is healthy now: 0.
    return EXIT_DAMAGE if (args.dry_run and report.changed) else EXIT_OK


def _cmd_compact(args) -> int:
    from .store import Store

    # Offline: the store is opened as a writer (LOCK held), so a live one is
    # refused with LockedError. Each table opens as the kind it was written
    # with; custom tables need their classes (--tables), and nothing is
    # opened without them.
    tables = _open_tables(args, "compact")
    with Store.open(args.dir, create=False, recovery=args.recovery, tables=tables) as store:
        info = store.checkpoint()
    if args.json:
        print(json.dumps(info))
    else:
        digest = info["digest"] or "- (custom tables have no digest)"
        print(f"snapshot at LSN {info['lsn']}: {info['bytes']} bytes in {info['path']} "
              f"({info['duration_s']:.2f} s, digest {digest})")
    return EXIT_OK


def _cmd_plan(args) -> int:
    from . import manifest
    from .plan import make_plan

    manifest.check_store_dir(args.dir)
    plan = make_plan(args.dir, manifest.read(args.dir))
    if args.json:
        print(json.dumps(plan))
        return EXIT_OK
    snap = plan["snapshot"]
    print(f"plan for {args.dir}:")
    print(f"  snapshot   " + (f"LSN {snap['lsn']:,}, {snap['bytes'] / 1e6:,.1f} MB, "
                              f"{snap['keys']:,} keys" if snap["lsn"] else "none"))
    approx = "" if plan["log_records_exact"] else "~"
    print(f"  log        {len(plan['segments'])} segments, {plan['wal_bytes'] / 1e6:,.1f} MB "
          f"({approx}{plan['log_records']:,} records after the snapshot)")
    print(f"  predicted  {plan['predicted_s']:.3f} s (rates from "
          f"{plan['predicted_from']['replay']}, {plan['history_opens']} earlier opens), "
          f"peak {plan['predicted_peak_bytes'] / 2**20:,.0f} MiB (from {plan['memory_from']})")
    return EXIT_OK


def _cmd_replay(args) -> int:
    from .store import Store
    from .warmup import Warmup

    bar, update = _progress_bar("replay", not args.json)

    class Timeline:
        def on_phase_end(self, phase, stats):
            if not args.json:
                extra = "".join(f"  {stats[k]:,} {k}" for k in ("records", "bytes")
                                if stats.get(k))
                print(f"  {phase:<9} {stats['duration_s'] * 1000:9.1f} ms{extra}",
                      file=sys.stderr if bar is not None else sys.stdout)

    tables = _open_tables(args, "replay")
    try:
        with Store.open(args.dir, create=False, recovery=args.recovery, progress=update,
                        tables=tables, warmup=Warmup(listeners=[Timeline()])) as store:
            report = store.warmup_report
            problems = [p.as_dict() for p in store.recovery_report.problems]
    finally:
        if bar is not None:
            bar.close()
    if args.json:
        print(json.dumps({**report, "problems": problems}))
    else:
        print(f"  total     {report['total_s'] * 1000:9.1f} ms "
              f"(predicted {report['predicted_s'] * 1000:.1f} ms)")
    return EXIT_OK


def _print_ledger(ledger) -> None:
    for e in ledger:
        state = "confirmed" if e.get("confirmed") else \
            f"rollback to LSN {e['snapshot_before']} possible"
        print(f"  {e['id']}: table {e['table']} v{e['from_version']} -> v{e['to_version']} "
              f"at LSN {e['lsn']}, digest {e.get('digest_before')} -> "
              f"{e.get('digest_after')} ({state})")


def _cmd_migrate_status(args) -> int:
    from . import manifest as _manifest
    from .migration_rollback import status
    from .migration_runs import describe_live, describe_recorded, read_live, recorded

    st = status(args.dir)
    # Online runs: the MANIFEST's records, and the live file a serving store writes.
    live, problem = read_live(args.dir)
    st["runs"] = {"recorded": recorded(_manifest.read(args.dir)), "live": live,
                  "live_problem": problem}
    if args.json:
        print(json.dumps(st))
        return EXIT_OK
    print(f"{args.dir}: last LSN {st['last_lsn']}")
    for name, t in st["tables"].items():
        old = [v for v in t["log_versions"] if v < t["version"]]
        print(f"  table {name}: version {t['version']}, snapshot at "
              f"{t['snapshot_version'] if t['snapshot_version'] is not None else '-'}, log "
              f"records at {', '.join(map(str, t['log_versions'])) or '-'}"
              + (f" (older than the table: {', '.join(map(str, old))}; read through "
                 "upcasters)" if old else ""))
    print(f"ledger: {len(st['ledger'])} migration(s)")
    _print_ledger(st["ledger"])
    runs = st["runs"]
    print(f"online runs recorded: {len(runs['recorded'])}")
    for r in runs["recorded"]:
        print(f"  {describe_recorded(r)}")
    if live is None:
        print(f"live runs: none ({problem})")
    else:
        print(f"live runs: {len(live)}")
        for r in live:
            for line in describe_live(r):
                print(f"  {line}")
    return EXIT_OK


def _load_migrations(spec: str):
    import importlib

    from .errors import ConfigError
    from .migrations import Migrations

    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(spec)
    except Exception as e:  # noqa: BLE001 - any import failure is the module's
        raise ConfigError(f"cannot import {spec!r}: {type(e).__name__}: {e}") from e
    mig = getattr(module, "migrations", None)
    if not isinstance(mig, Migrations):
        raise ConfigError(f"module {spec!r} has no Migrations object named 'migrations'")
    return mig


def _cmd_migrate_apply(args) -> int:
    from .store import Store

    mig = _load_migrations(args.module)
    with Store.open(args.dir, create=False, recovery=args.recovery, migrations=mig) as s:
        applied = next(p for p in s.warmup_report["phases"] if p["name"] == "migrate")
        ids = applied.get("migrations") or []
        entries = [e for e in s.ledger if e["id"] in ids]
    if args.json:
        print(json.dumps({"applied": entries}))
    else:
        print(f"applied {len(entries)} migration(s)" + (":" if entries else ""))
        _print_ledger(entries)
    return EXIT_OK


def _cmd_migrate_rollback(args) -> int:
    from .errors import MigrationError
    from .migration_rollback import rollback

    try:
        plan = rollback(args.dir, steps=args.steps, to=args.to, dry_run=args.dry_run,
                        force=args.force)
    except MigrationError as e:
        if args.json:
            print(json.dumps({"error": str(e), "reason": e.reason}))
        else:
            print(f"rehydrate migrate rollback: {e}", file=sys.stderr)
        return EXIT_DAMAGE
    if args.json:
        print(json.dumps(plan))
        return EXIT_OK
    spans = ", ".join(f"{a}..{b}" for a, b in plan["boundary"]) or "none"
    verb = "rolled back" if plan["done"] else "would roll back"
    print(f"{verb} {', '.join(plan['migrations'])} to the snapshot at LSN {plan['to_lsn']} "
          f"(digest {plan['digest']})")
    print(f"  boundary: {plan['dropped_records']} record(s) after the migration (LSN {spans})")
    if plan["segments"]:
        print(f"  segments set aside in quarantine/: {', '.join(plan['segments'])}")
    return EXIT_OK


def _cmd_migrate_confirm(args) -> int:
    from .migration_rollback import confirm

    newly = confirm(args.dir)
    if args.json:
        print(json.dumps({"confirmed": newly}))
    else:
        print(f"confirmed {len(newly)} migration(s)" + (f": {', '.join(newly)}" if newly else "")
              + "; their rollback snapshots go at the next checkpoint")
    return EXIT_OK


def _cmd_bench(args) -> int:
    from .bench.run import main as bench_main

    return bench_main(args)


def _mix(text: str):
    from .bench.workload import parse_mix

    try:
        return parse_mix(text)
    except ValueError as e:  # ConfigError: argparse reports it as a usage error
        raise argparse.ArgumentTypeError(str(e)) from None


def build_parser() -> argparse.ArgumentParser:
    from .recovery import MODES

    p = _Parser(prog="rehydrate", description="Inspect and check rehydrate state directories.")
    # `rehydrate --version` is `rehydrate version`, as users of other tools expect.
    p.add_argument("--version", action="store_true", help="the same as `rehydrate version`")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    v = sub.add_parser("version", help="versions of rehydrate and its core")
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=_cmd_version)

    def dir_cmd(name, func, help_text, recovery=True, tables=False):
        c = sub.add_parser(name, help=help_text)
        c.add_argument("dir", metavar="DIR")
        c.add_argument("--json", action="store_true", help="machine-readable output")
        if recovery:
            c.add_argument("--recovery", choices=MODES, default="tolerate-tail",
                           help="judge problems as this recovery mode would (default %(default)s)")
        if tables:
            c.add_argument("--tables", default=None, metavar="PKG.MOD",
                           help="a module whose 'tables' dict is what Store.open(tables=) "
                                "takes: custom tables then run their own classes")
        c.set_defaults(func=func)
        return c

    vc = dir_cmd("verify", _cmd_verify, "check segments, frames, checksums, LSN order and "
                 "snapshots (DIR: a store, one snapshot folder, or an archive's URI, "
                 "scheme://...)", tables=True)
    vc.add_argument("--deep", action="store_true",
                    help="also replay in memory, decode every key and value, print the digest")
    dir_cmd("inspect", _cmd_inspect, "segments, LSN ranges, tables and sizes", recovery=False,
            tables=True)
    d = dir_cmd("dump", _cmd_dump, "records as JSON lines")
    d.add_argument("--table", help="only this table")
    d.add_argument("--from-lsn", type=int, default=None, metavar="N")
    d.add_argument("--to-lsn", type=int, default=None, metavar="N")
    dir_cmd("digest", _cmd_digest, "content digest of the replayed state (docs/FORMAT.md)",
            tables=True)
    dir_cmd("compact", _cmd_compact, "write a snapshot now (offline checkpoint)", tables=True)
    dir_cmd("plan", _cmd_plan, "what an open would read, its predicted time and memory",
            recovery=False)
    dir_cmd("replay", _cmd_replay, "a cold open, timed phase by phase (the warmup report)",
            tables=True)
    r = dir_cmd("repair", _cmd_repair, "cut a damaged log at its first problem, keeping evidence",
                recovery=False)
    r.add_argument("--dry-run", action="store_true", help="report what would be cut; change nothing")

    m = sub.add_parser(
        "migrate", help="table versions, migrations, online runs, rollback (docs/migrations.md)",
        description="Table versions and migrations (docs/migrations.md). 'status' also shows "
                    "online migration runs: those the MANIFEST records, and the live runs of a "
                    "store serving the directory (their state, build progress, routed fraction "
                    "and read, error and divergence counters), read from the "
                    "migration-runs.json it keeps current. Online runs are started, routed and "
                    "completed through the Store API (store.start_migration, store.route, "
                    "store.complete_migration), not from here.")
    msub = m.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)
    msub.required = True

    def mig_cmd(name, func, help_text, description=None):
        c = msub.add_parser(name, help=help_text, description=description or help_text)
        c.add_argument("dir", metavar="DIR")
        c.add_argument("--json", action="store_true", help="machine-readable output")
        c.set_defaults(func=func)
        return c

    mig_cmd("status", _cmd_migrate_status,
            "versions per table, the ledger, online migration runs (recorded and live)",
            "Each table's version and the versions its snapshot and log records hold; the "
            "migration ledger; online migration runs: those the MANIFEST records (outcome, "
            "reason) and, while a store serves DIR, its live runs from migration-runs.json "
            "(state, progress, fraction, per-path reads and errors, divergences). Read-only.")
    ma = mig_cmd("apply", _cmd_migrate_apply, "run the pending migrations of a module")
    ma.add_argument("--module", required=True, metavar="PKG.MOD",
                    help="a module with a rehydrate.Migrations named 'migrations'")
    ma.add_argument("--recovery", choices=MODES, default="tolerate-tail")
    mr = mig_cmd("rollback", _cmd_migrate_rollback,
                 "return to the state before the last migration(s)")
    which = mr.add_mutually_exclusive_group()
    which.add_argument("--steps", type=int, default=None, metavar="N")
    which.add_argument("--to", default=None, metavar="ID",
                       help="roll back this migration and every one after it")
    mr.add_argument("--dry-run", action="store_true", help="show the plan; change nothing")
    mr.add_argument("--force", action="store_true",
                    help="drop records written after the migration (kept in quarantine/)")
    mig_cmd("confirm", _cmd_migrate_confirm, "confirm the migrations: no rollback after")

    b = sub.add_parser("bench", help="cold starts on synthetic data, next to the usual baselines")
    b.add_argument("--records", type=int, default=1_000_000, metavar="N", help="ops to write")
    b.add_argument("--keys", type=int, default=200_000, metavar="K")
    b.add_argument("--value-bytes", type=int, default=32, metavar="B")
    b.add_argument("--mix", type=_mix, default=(80, 10, 10), metavar="PUT:INCR:DELETE",
                   help="proportions of the ops (default 80:10:10)")
    b.add_argument("--snapshot-at", type=float, default=None, metavar="FRACTION",
                   help="checkpoint this fraction of the way (default: log only)")
    b.add_argument("--repeat", type=int, default=3, metavar="R")
    b.add_argument("--dir", default=None, metavar="D",
                   help="work here (empty, or an earlier bench's) instead of a temp dir")
    b.add_argument("--keep", action="store_true", help="keep the data afterwards")
    b.add_argument("--json", action="store_true")
    b.add_argument("--plot", default=None, metavar="FILE.png")
    b.set_defaults(func=_cmd_bench)

    from .handoff_cli import add_commands

    add_commands(sub)  # follow, promote, status (docs/replication.md)
    from .archive_cli import add_commands as add_archive_commands

    add_archive_commands(sub)  # restore, archive ls (docs/archive.md)
    return p


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).splitlines())


def main(argv=None) -> int:
    from .archive_cli import exit_code as archive_exit_code
    from .errors import (
        ArchiveError,
        ConfigError,
        LockedError,
        NotAStoreError,
        RehydrateError,
        StorageIOError,
        UnsupportedFormatError,
    )

    from .shutdown_risk import silence

    # A tool's store is closed by the tool: the warning about SIGTERM and
    # unsynced writes is for services (docs/durability.md).
    silence()
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        if not args.version:
            parser.error("the following arguments are required: COMMAND")
        args = parser.parse_args(["version"])
    elif args.version:
        parser.error("--version takes no command")
    try:
        return args.func(args)
    except (NotAStoreError, UnsupportedFormatError, ConfigError, StorageIOError,
            LockedError) as e:
        print(f"rehydrate {args.command}: {_one_line(e)}", file=sys.stderr)
        return EXIT_USAGE
    except ArchiveError as e:  # unreachable, no archive there...: 2; damage: 1
        print(f"rehydrate {args.command}: {_one_line(e)}", file=sys.stderr)
        return archive_exit_code(e)
    except RehydrateError as e:
        print(f"rehydrate {args.command}: {_one_line(e)}", file=sys.stderr)
        return EXIT_DAMAGE
    except BrokenPipeError:  # `rehydrate dump | head`
        return EXIT_OK
    except KeyboardInterrupt:  # Ctrl-C: what was started has been cleaned up
        print(f"rehydrate {args.command}: interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        print(f"rehydrate {args.command}: cannot read: {e}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
