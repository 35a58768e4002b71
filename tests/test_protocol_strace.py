"""The on-disk protocol, checked on the system calls themselves (T9).

A sync="always" writer (helpers/crash_writer.py) runs under strace: puts that
print each acknowledged LSN to stdout, segment rolls, a checkpoint that
trims the log. From the trace:
(a) every acknowledgement written to fd 1 comes after an fsync of the
    segment its records went to (no segment write is unsynced at an ack);
(b) a directory fsync follows every create and rename of a protocol file
    (segments, MANIFEST, snapshot files and folders) before anything depends
    on it: an acknowledgement, another rename, an unlink;
(c) an old segment is unlinked only once a MANIFEST whose log_start drops it
    was renamed into place and its directory fsynced.
HINTS, HISTORY and LOCK are best effort by design and not checked.
"""

from __future__ import annotations

import codecs
import os
import re
import shutil
import subprocess
import sys

import pytest

from rehydrate import manifest
from rehydrate.wal import parse_segment_name

from helpers.tier import missing_tool

pytestmark = pytest.mark.reliability

WRITER = os.path.join(os.path.dirname(__file__), "helpers", "crash_writer.py")
CALLS = "openat,write,pwrite64,fsync,fdatasync,rename,renameat,renameat2,unlink,unlinkat," \
        "ftruncate,mkdir,mkdirat"
BEST_EFFORT = {"LOCK", "HINTS", "HINTS.tmp", "HISTORY", "HISTORY.tmp"}

CALL = re.compile(r"[\d:.]+ (\w+)\((.*)\) += (-?\d+)")
RESUMED = re.compile(r"[\d:.]+ <\.\.\. \w+ resumed>(.*)")
QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')
FD = re.compile(r"(\d+)<([^>]*)>")
DIRFD = re.compile(r"(?:AT_FDCWD|\d+)<([^>]*)>")  # with -y: AT_FDCWD</cwd>, 3</dir>


def syscalls(log: str):
    """(name, args) of each successful call, in the order they finished (a
    call strace printed in two parts, around another thread's, is joined)."""
    started = {}
    for line in log.splitlines():
        pid, rest = line.split(None, 1)
        if rest.endswith("<unfinished ...>"):
            started[pid] = rest[:-len("<unfinished ...>")]
            continue
        resumed = RESUMED.match(rest)
        if resumed:
            rest = started.pop(pid) + resumed.group(1)
        m = CALL.match(rest)
        if m and int(m.group(3)) >= 0:
            yield m.group(1), m.group(2)


def created_path(name: str, args: str, text: list) -> str:
    """The path an openat, mkdir or mkdirat creates. The *at calls take it
    relative to their directory fd (glibc on arm64 and others has only
    mkdirat, and os.mkdir(dir_fd=) uses it anywhere), which -y names."""
    path = text[0].decode()
    if name == "mkdir" or os.path.isabs(path):
        return path
    m = DIRFD.match(args)
    assert m, f"{name} relative to an unnamed directory fd: {args}"
    return os.path.normpath(os.path.join(m.group(1), path))


def check_protocol(log: str, store: str) -> dict:
    """Assert (a), (b) and (c) over the trace; returns what was seen."""
    wal = os.path.join(store, "wal")
    seen = {"acks": 0, "renames": 0, "unlinked": 0, "dirs_created": 0}
    dirty = {}            # directory -> the create or rename in it not yet fsynced
    unsynced = set()      # segments written since their last fsync
    synced = False        # a segment fsync since the last ack
    written = {}          # MANIFEST.tmp -> the bytes written to it
    segments = set()      # first LSNs of the segments renamed into place
    durable = pending = None  # MANIFEST renamed and fsynced / renamed only

    def ours(path):
        return path.startswith(store + os.sep) and os.path.basename(path) not in BEST_EFFORT

    def nothing_renamed_unsynced(what):
        late = [v for v in dirty.values() if v.startswith("rename")]
        assert not late, f"{what} before the directory fsync of {late}"

    for name, args in syscalls(log):
        fds = FD.findall(args)
        text = [codecs.escape_decode(s.encode())[0] for s in QUOTED.findall(args)]
        if name == "write" and fds[0][0] == "1" and text[0].strip().isdigit():
            ack = text[0].decode().strip()
            assert synced and not unsynced, f"ack {ack} before its segment's fsync"
            nothing_renamed_unsynced(f"ack {ack}")
            synced, seen["acks"] = False, seen["acks"] + 1
        elif name == "write" and os.path.dirname(fds[0][1]) == wal:
            unsynced.add(fds[0][1])
        elif name == "write" and fds[0][1] in written:
            written[fds[0][1]] += text[0]
        elif name == "fsync":
            path = fds[0][1]
            if path in unsynced:
                unsynced.discard(path)
                synced = True
            dirty.pop(path, None)
            if path == store and pending is not None:
                durable, pending = pending, None
        elif name in ("openat", "mkdir", "mkdirat") and ("O_CREAT" in args or name != "openat"):
            path = created_path(name, args, text)
            if os.path.basename(path) == "MANIFEST.tmp":
                written[path] = b""
            if ours(path):  # (a rename pending there stays the one to report)
                dirty.setdefault(os.path.dirname(path), f"create {path}")
                seen["dirs_created"] += name != "openat"
        elif name == "rename":
            src, dst = (t.decode() for t in text)
            if not ours(dst):
                continue
            nothing_renamed_unsynced(f"rename {dst}")
            assert src not in dirty, f"{src} renamed before its files were fsynced"
            dirty[os.path.dirname(dst)] = f"rename {dst}"
            seen["renames"] += 1
            if os.path.dirname(dst) == wal:
                segments.add(parse_segment_name(os.path.basename(dst)))
            if dst == os.path.join(store, manifest.MANIFEST_NAME):
                pending = manifest.decode(written[src], src)
        elif name in ("unlink", "unlinkat"):
            path = text[0].decode() if name == "unlink" else os.path.join(fds[0][1],
                                                                            text[0].decode())
            nothing_renamed_unsynced(f"unlink {path}")
            if os.path.dirname(path) == wal:
                first = parse_segment_name(os.path.basename(path))
                after = min((s for s in segments if s > first), default=None)
                assert after is not None and pending is None and durable is not None \
                    and durable.get("log_start", 1) >= after, \
                    f"{path} unlinked before a durable MANIFEST dropped it ({durable})"
                seen["unlinked"] += 1
    assert not dirty, f"never made durable: {dirty}"
    assert not unsynced, f"segments written and never fsynced: {unsynced}"
    return seen


@pytest.mark.timeout(120)
def test_fsync_before_ack_dir_fsync_after_create_and_rename_unlink_after_manifest(
        tmp_path, core_env):
    strace = shutil.which("strace")
    if strace is None:
        missing_tool("strace is not installed (Debian's strace; `make strace` installs it)")
    store, log = str(tmp_path / "state"), str(tmp_path / "trace")
    # 110 ops of 4 KiB segments roll twice; the checkpoint after 60 trims the first.
    out = subprocess.run([strace, "-f", "-tt", "-y", "-s", "65536", "-e", f"trace={CALLS}",
                          "-o", log, sys.executable, WRITER, store, "1", "4096", "110", "60"],
                         env=core_env, capture_output=True, text=True, timeout=100)
    assert out.returncode == 0, out.stderr
    with open(log) as f:
        seen = check_protocol(f.read(), store)
    print(seen)
    assert seen["acks"] == 110 and seen["unlinked"] >= 1
    # creating MANIFEST and the first segment, 2 rolls, the snapshot, 2 MANIFESTs
    assert seen["renames"] >= 7
    # wal/, snapshots/ and the snapshot's folder, however libc makes them
    assert seen["dirs_created"] >= 3, seen


# ------------------------------------------------ the checker on its own
STORE = "/data/state"


def _trace(*calls: str) -> str:
    return "".join(f"100 12:00:00.{i:06d} {c}\n" for i, c in enumerate(calls))


def _mkdir_snapshot(how: str) -> str:
    """The creation of snapshots/5.tmp, as each call strace may show it."""
    return {
        "mkdir": f'mkdir("{STORE}/snapshots/5.tmp", 0700) = 0',
        "mkdirat-cwd": f'mkdirat(AT_FDCWD</elsewhere>, "{STORE}/snapshots/5.tmp", 0700) = 0',
        "mkdirat-relative": f'mkdirat(AT_FDCWD<{STORE}>, "snapshots/5.tmp", 0700) = 0',
        "mkdirat-dirfd": f'mkdirat(7<{STORE}/snapshots>, "5.tmp", 0700) = 0',
    }[how]


HOW = ["mkdir", "mkdirat-cwd", "mkdirat-relative", "mkdirat-dirfd"]


@pytest.mark.parametrize("how", HOW)
def test_the_checker_wants_a_directory_fsync_after_every_mkdir(how):
    with pytest.raises(AssertionError, match="never made durable.*snapshots/5.tmp"):
        check_protocol(_trace(_mkdir_snapshot(how)), STORE)


@pytest.mark.parametrize("how", HOW)
def test_the_checker_accepts_a_mkdir_whose_directory_was_fsynced(how):
    seen = check_protocol(_trace(_mkdir_snapshot(how),
                                 f"fsync(8<{STORE}/snapshots>) = 0"), STORE)
    assert seen["dirs_created"] == 1


def test_the_checker_wants_the_fsync_before_a_rename_out_of_a_new_folder():
    with pytest.raises(AssertionError, match="renamed before its files were fsynced"):
        check_protocol(_trace(f'mkdirat(7<{STORE}/snapshots>, "5.tmp", 0700) = 0',
                              f'openat(7<{STORE}/snapshots>, "5.tmp/META", '
                              'O_WRONLY|O_CREAT|O_EXCL, 0600) = 9</x>',
                              f"fsync(8<{STORE}/snapshots>) = 0",
                              f'rename("{STORE}/snapshots/5.tmp", "{STORE}/snapshots/5") = 0'),
                       STORE)
