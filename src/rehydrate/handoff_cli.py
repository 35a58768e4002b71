"""The replication commands of ``rehydrate``: follow, promote, status
(docs/replication.md, "Commands"). cli.py parses; these run. ``status
DIR`` also shows the crash-loop guard's record (docs/warmup.md,
"Crash-loop safe mode") and ``--clear-failures`` resets it.

A token is read from ``--token-file`` or the REHYDRATE_TOKEN environment
variable, never from the command line (where ``ps`` shows it), and never
printed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
import time
from typing import Any, Optional

from .errors import ConfigError
from .exitcodes import EXIT_DAMAGE, EXIT_OK

__all__ = ["cmd_follow", "cmd_promote", "cmd_status", "is_url", "read_token"]


def is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def read_token(args: argparse.Namespace) -> Optional[str]:
    """The replication token: --token-file's first line, else $REHYDRATE_TOKEN."""
    path = getattr(args, "token_file", None)
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                token = f.readline().strip()
        except OSError as e:
            raise ConfigError(f"--token-file: cannot read {path}: {e.strerror or e}") from None
        if not token:
            raise ConfigError(f"--token-file: {path} is empty")
        return token
    return os.environ.get("REHYDRATE_TOKEN") or None


def _standby(source: str, directory: Optional[str], args: argparse.Namespace) -> Any:
    from .store import Store

    if is_url(source):
        if directory is None:
            raise ConfigError("following a URL needs DIR, the standby's own directory")
        return Store.open_standby(directory, source, token=read_token(args))
    if directory is not None and os.path.realpath(directory) != os.path.realpath(source):
        raise ConfigError("a standby of a local store follows that directory itself: "
                          "give DIR once (or the same DIR twice)")
    return Store.open_standby(source)


def _print(args: argparse.Namespace, data: dict[str, Any], text: str) -> None:
    if args.json:
        print(json.dumps(data), flush=True)
    else:
        print(text, flush=True)


def cmd_follow(args: argparse.Namespace) -> int:
    """Run a standby and show its lag every --interval seconds until
    interrupted (SIGINT, SIGTERM) or --for-s has passed."""
    standby = _standby(args.source, args.dir, args)
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    started = time.monotonic()
    try:
        while not stop.is_set():
            lag = standby.lag
            _print(args, {"role": standby.role, "epoch": standby.epoch, **lag},
                   f"{standby.role} epoch {standby.epoch} lsn {lag['lsn']} "
                   f"behind {lag['records']} records {lag['seconds'] * 1000:.1f} ms "
                   f"({lag['state']})")
            if standby.follow_error is not None:
                raise standby.follow_error
            if args.for_s is not None and time.monotonic() - started >= args.for_s:
                break
            stop.wait(args.interval)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        standby.close()
    return EXIT_OK


def cmd_promote(args: argparse.Namespace) -> int:
    """DIR: take the writes from the primary writing DIR (a standby opened
    here is promoted, then closed cleanly: the directory is left fenced at
    the new epoch, with no writer). URL: ask the standby serving there to
    promote itself."""
    if is_url(args.target):
        from .replication_client import ReplicationClient

        import secrets

        client = ReplicationClient(args.target, token=read_token(args))
        result = client.handoff({"store_id": client.hello().get("store_id"),
                                 "request": secrets.token_hex(8), "phase": "promote",
                                 "timeout_s": args.timeout, "hold_s": args.hold})
    else:
        standby = _standby(args.target, None, args)
        try:
            result = standby.promote(timeout_s=args.timeout, hold_s=args.hold)
        finally:
            standby.close()
    phases = result.get("phases", {})
    lines = [f"promoted: epoch {result.get('epoch')}, lsn {result.get('lsn')}"
             + (" (the primary was gone: failover)" if result.get("failover") else "")]
    for name, seconds in phases.items():
        lines.append(f"  {name:<12} {seconds * 1000:9.2f} ms")
    if result.get("held_s") is not None:
        lines.append(f"  writes held  {result['held_s'] * 1000:9.2f} ms (on the old primary)")
    lines.append(f"  total        {result.get('total_s', 0.0) * 1000:9.2f} ms")
    _print(args, result, "\n".join(lines))
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    """Role, epoch, LSN and lag of a store: a URL (its hello) or a DIR
    (its MANIFEST, its LOCK, and a read of its log), and for a DIR the
    failed opens recorded and whether the next open runs in safe mode (exit
    1 when it does). ``--clear-failures`` forgets them first."""
    guard = None
    if is_url(args.target):
        if args.clear_failures:
            raise ConfigError("--clear-failures is for a store directory, not a URL")
        from .replication_client import ReplicationClient

        info = ReplicationClient(args.target, token=read_token(args)).hello()
    else:
        from . import crashloop as _crashloop
        from . import manifest as _manifest
        from .standby import lock_is_free
        from .store import Store

        _manifest.check_store_dir(args.target)
        if type(args.max_failed_opens) is not int or args.max_failed_opens < 0:
            raise ConfigError("--max-failed-opens must be an int >= 0")
        cleared = _crashloop.clear_failures(args.target) if args.clear_failures else None
        decision = _crashloop.decide(args.target, args.max_failed_opens, warn=False)
        guard = dict(decision.as_dict(args.max_failed_opens), cleared=cleared)
        man = _manifest.read(args.target)
        with Store.open(args.target, readonly=True) as reader:
            info = {"role": "no writer" if lock_is_free(args.target) else "primary",
                    "epoch": _manifest.epoch(man, args.target),
                    "store_id": _manifest.store_id(man, args.target), "lsn": reader.lsn,
                    "log_start": _manifest.log_start(man, args.target),
                    "snapshots": list(man.get("snapshots") or []),
                    "handoff": man.get("handoff"), "failures": guard}
    lag = info.get("lag") or {}
    text = (f"{info.get('role')}  epoch {info.get('epoch')}  lsn {info.get('lsn')}"
            + (f"  behind {lag.get('records')} records {lag.get('seconds', 0) * 1000:.1f} ms"
               if lag else "") + f"  store {info.get('store_id')}")
    if guard is not None:
        text += "\n" + _guard_text(guard)
    _print(args, info, text)
    return EXIT_DAMAGE if guard is not None and guard["safe_mode"] else EXIT_OK


def _guard_text(guard: dict[str, Any]) -> str:
    lines = []
    if guard["cleared"] is not None:
        lines.append(f"cleared {guard['cleared']} failed opens")
    if guard["history_problem"]:
        lines.append(f"HISTORY ignored: {guard['history_problem']}")
    lines.append(f"failed opens since the last full open: {guard['failed_opens']} "
                 f"(safe mode after {guard['max_failed_opens']} of one step"
                 f"{'; off' if not guard['max_failed_opens'] else ''})")
    for c in guard["counts"]:
        lines.append(f"  {c['count']}x {c['kind']} {c['name']} of phase {c['phase']} "
                     f"({c['code_hash'][:19]})")
    lines.append("next open: " + (f"SAFE MODE (degraded): {guard['reason']}"
                                  if guard["safe_mode"] else "full"))
    return "\n".join(lines)


def add_commands(sub: Any) -> None:
    """The three commands, on cli.py's subparsers."""
    def token(c: Any) -> None:
        c.add_argument("--token-file", default=None, metavar="FILE",
                       help="the replication token's file (else $REHYDRATE_TOKEN)")
        c.add_argument("--json", action="store_true", help="machine-readable output")

    f = sub.add_parser("follow", help="run a standby of SOURCE (a URL, or a store directory) "
                                      "and show its lag (docs/replication.md)")
    f.add_argument("source", metavar="SOURCE")
    f.add_argument("dir", metavar="DIR", nargs="?", default=None)
    f.add_argument("--interval", type=float, default=1.0, metavar="S")
    f.add_argument("--for-s", type=float, default=None, metavar="S",
                   help="stop after this long (default: until interrupted)")
    token(f)
    f.set_defaults(func=cmd_follow)
    p = sub.add_parser("promote", help="hand the writes over: to a standby opened here on DIR, "
                                       "or to the standby serving at URL")
    p.add_argument("target", metavar="URL_OR_DIR")
    p.add_argument("--timeout", type=float, default=5.0, metavar="S")
    p.add_argument("--hold", type=float, default=2.0, metavar="S",
                   help="the longest the primary holds writes (default %(default)s)")
    token(p)
    p.set_defaults(func=cmd_promote)
    s = sub.add_parser("status", help="role, epoch, LSN and lag of a store (URL or DIR); for "
                                      "a DIR, its failed opens and whether the next one runs "
                                      "in safe mode (exit 1 when it does)")
    s.add_argument("target", metavar="URL_OR_DIR")
    s.add_argument("--clear-failures", action="store_true",
                   help="forget the failed opens recorded (the next open runs every step)")
    s.add_argument("--max-failed-opens", type=int, default=3, metavar="N",
                   help="the service's Store.open(max_failed_opens=) (default %(default)s)")
    token(s)
    s.set_defaults(func=cmd_status)
