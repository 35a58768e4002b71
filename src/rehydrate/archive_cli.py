"""The archive commands of ``rehydrate``: restore, verify URI, archive ls
(docs/archive.md). cli.py parses (``verify`` is its command: given a URI,
it runs ``cmd_verify_archive``); these run.

Exit codes (exitcodes.py): 0 done or clean, 1 damage (an object missing
or failing its checks), 2 usage or unreachable (a bad URI or argument, no
archive there, an unreachable store, a destination that is not empty, a
target the archive does not hold: past its end, or before the oldest
point it can start from, an archive format newer than this rehydrate).
``exit_code`` says which an ArchiveError is; ``verify`` reports an archive
that cannot start a restore at all as a problem (``no_base``: exit 1).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from typing import Any, Callable, Optional

from .errors import ArchiveError, ConfigError
from .exitcodes import EXIT_DAMAGE, EXIT_OK, EXIT_USAGE

__all__ = ["USAGE_REASONS", "add_commands", "cmd_archive_ls", "cmd_restore",
           "cmd_verify_archive", "exit_code", "is_uri"]

#: ArchiveError reasons that are exit 2 (the others are damage: exit 1).
USAGE_REASONS = frozenset({"unreachable", "no_archive", "not_empty", "no_target", "no_base",
                           "unsupported_format"})


def is_uri(target: str) -> bool:
    """Whether a command's argument names an archive (``scheme://...``)
    rather than a local directory."""
    return "://" in target


def exit_code(e: ArchiveError) -> int:
    return EXIT_USAGE if e.reason in USAGE_REASONS else EXIT_DAMAGE


def iso_ms(ms: Optional[int]) -> Optional[str]:
    """Unix milliseconds as ISO 8601 UTC (``...Z``)."""
    if ms is None:
        return None
    t = dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc)
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _bar(desc: str, enabled: bool) -> tuple[Any, Optional[Callable[[int, int], None]]]:
    """A tqdm bar over bytes on a terminal, or (None, None)."""
    if not enabled or not sys.stderr.isatty():
        return None, None
    from tqdm import tqdm

    bar = tqdm(total=0, unit="B", unit_scale=True, desc=desc, leave=False, file=sys.stderr)

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    return bar, update


def cmd_restore(args: argparse.Namespace) -> int:
    """Restore DIR from the archive at URI (to its end, --to-lsn or
    --to-time) and say where it got."""
    from .archive_restore import restore

    bar, update = _bar("restore", not args.json)
    try:
        result = restore(args.uri, args.dir, to_lsn=args.to_lsn, to_time=args.to_time,
                         parallel=args.parallel, progress=update)
    finally:
        if bar is not None:
            bar.close()
    inside = result["lsn"] < result["target_lsn"]
    if args.json:
        print(json.dumps({**result, "inside_frame": inside,
                          "to_time": args.to_time, "to_lsn": args.to_lsn}))
        return EXIT_OK
    if args.to_time is not None:
        target = f"{args.to_time}: LSN {result['target_lsn']}"
    elif args.to_lsn is not None:
        target = f"LSN {result['target_lsn']}"
    else:
        target = f"the archive's end, LSN {result['target_lsn']}"
    base = (f"snapshot LSN {result['snapshot_lsn']}" if result["snapshot_lsn"]
            else "no snapshot")
    print(f"restored {result['path']} at LSN {result['lsn']} (target {target}; {base}, "
          f"{result['segments']} segments, {result['bytes']:,} bytes, "
          f"{result['duration_s']:.2f} s)")
    if inside:
        print(f"LSN {result['target_lsn']} is inside a frame; restored to the last frame end "
              f"at {result['lsn']}")
    return EXIT_OK


def cmd_verify_archive(args: argparse.Namespace) -> int:
    """``rehydrate verify URI``: the archive checked in place."""
    from .archive_verify import verify_archive

    if getattr(args, "deep", False) or getattr(args, "tables", None):
        raise ConfigError("--deep and --tables check a directory, not an archive")
    bar, update = _bar("verify", not args.json)
    try:
        report = verify_archive(args.dir, progress=update)
    finally:
        if bar is not None:
            bar.close()
    if args.json:
        print(json.dumps(report))
    else:
        status = "OK" if report["ok"] else "DAMAGED"
        if report["archived_lsn"] is None:  # (the manifest is unusable: nothing else checked)
            print(f"{status}: {report['uri']}: its manifest is unusable")
        else:
            print(f"{status}: {report['uri']}: {report['snapshots']} snapshots, "
                  f"{report['segments']} segments, archived to LSN {report['archived_lsn']}, "
                  f"{report['bytes']:,} bytes read, "
                  f"{sum(report['requests'].values())} requests")
        if report["problems"]:
            print("problems:")
            for p in report["problems"]:
                off = f" @{p['offset']}" if p["offset"] is not None else ""
                lsn = f" LSN {p['lsn']}" if p["lsn"] is not None else ""
                print(f"  {p['kind']}: {p['object'] or '-'}{off}{lsn}: {p['detail']}")
        if report["orphans"]:
            print("not in the manifest (not damage):")
            for o in report["orphans"]:
                print(f"  {o['kind']}: {o['object']} ({o['bytes']:,} bytes)")
    return EXIT_OK if report["ok"] else EXIT_DAMAGE


def _lsn_range(info: dict[str, Any]) -> Optional[list[int]]:
    """[first, last] LSN a restore may target: from the log's start (or
    the oldest snapshot the log goes on from) to the archive's end; None
    when nothing can start a restore."""
    end = info["archived_lsn"]
    start = info["log_start"]
    if start is None or start == 1:
        return [0, end]
    bases = [s["lsn"] for s in info["snapshots"] if s["lsn"] + 1 >= start]
    return [min(bases), end] if bases else None


def cmd_archive_ls(args: argparse.Namespace) -> int:
    """``rehydrate archive ls URI``: what the manifest lists (one GET)."""
    from . import archive as A
    from .objstore import open_object_store

    store = open_object_store(args.uri, attempts=6, base_s=0.2, cap_s=5.0, create=False)
    man = A.read_manifest(store)
    if man is None:
        raise ArchiveError("no archive here (no manifest object)", uri=store.uri,
                           object=A.MANIFEST_OBJECT, reason="no_archive")
    info = A.describe(man)
    info["uri"] = store.uri
    info["updated"] = iso_ms(info["updated_ms"])
    info["lsn_range"] = _lsn_range(info)
    for s in info["snapshots"]:
        s["time"] = iso_ms(s["time_ms"])
    for g in info["segments"]:
        g["t_first"], g["t_last"] = iso_ms(g["t_first_ms"]), iso_ms(g["t_last_ms"])
    info["requests"] = store.stats()["requests"]
    if args.json:
        print(json.dumps(info))
        return EXIT_OK
    span = "nothing to restore from" if info["lsn_range"] is None else \
        f"restorable LSN {info['lsn_range'][0]}..{info['lsn_range'][1]}"
    print(f"{info['uri']}: store {info['store_id']}, epoch {info['epoch']}, {span}, "
          f"updated {info['updated']}")
    print(f"snapshots ({len(info['snapshots'])}):")
    for s in sorted(info["snapshots"], key=lambda s: s["lsn"]):
        print(f"  LSN {s['lsn']}  {s['time']}  {s['bytes']:,} bytes  {s['files']} files")
    print(f"segments ({len(info['segments'])}):")
    for g in info["segments"]:
        print(f"  LSN {g['first_lsn']}..{g['last_lsn']}  {g['bytes']:,} bytes  "
              f"{'sealed' if g['sealed'] else 'open'}  {g['parts']} parts  "
              f"{g['t_first']} .. {g['t_last']}")
    return EXIT_OK


def add_commands(sub: Any) -> None:
    """restore and archive ls, on cli.py's subparsers (verify is cli.py's)."""
    r = sub.add_parser("restore", help="make DIR a store holding an archive's state, at its "
                                       "end, an LSN or a time (docs/archive.md)")
    r.add_argument("uri", metavar="URI", help="the archive (s3://BUCKET/PREFIX, file:///PATH, "
                                              "...)")
    r.add_argument("dir", metavar="DIR", help="absent or empty")
    which = r.add_mutually_exclusive_group()
    which.add_argument("--to-lsn", type=int, default=None, metavar="N",
                       help="the last frame ending at or before LSN N")
    which.add_argument("--to-time", default=None, metavar="ISO8601",
                       help="the newest LSN written by then (no zone: UTC)")
    r.add_argument("--parallel", type=int, default=8, metavar="N",
                   help="range requests at a time (default %(default)s)")
    r.add_argument("--json", action="store_true", help="machine-readable output")
    r.set_defaults(func=cmd_restore)
    a = sub.add_parser("archive", help="what an archive holds (docs/archive.md)")
    asub = a.add_subparsers(dest="action", metavar="ACTION", parser_class=type(a))
    asub.required = True
    ls = asub.add_parser("ls", help="its snapshots, segments and LSN range, from its manifest "
                                    "(one GET)")
    ls.add_argument("uri", metavar="URI")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.set_defaults(func=cmd_archive_ls)
