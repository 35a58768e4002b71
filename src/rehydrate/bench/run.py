"""``rehydrate bench``: build, time R cold starts of ours and each baseline
alternately, report (table, JSON, plot), clean up whatever happens."""

from __future__ import annotations

import errno
import os
import platform
import shutil
import statistics
import sys
import tempfile
from typing import Optional

from ..errors import ConfigError, StorageIOError
from . import baselines as B
from .workload import MARKER, Workload, build


def machine() -> dict:
    from .._sysinfo import proc_kb_field

    mem = proc_kb_field("/proc/meminfo", "MemTotal")
    return {"cpus": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "memory_bytes": mem}


def _work_dir(requested: Optional[str]) -> tuple:
    """(directory, made_by_us). A --dir that exists must be empty or ours."""
    if requested is None:
        return tempfile.mkdtemp(prefix="rehydrate-bench-"), True
    path = os.path.abspath(requested)
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise ConfigError(f"--dir {path} exists and is not a directory")
        entries = os.listdir(path)
        if entries and MARKER not in entries:
            raise ConfigError(f"--dir {path} exists, is not empty and is not a bench "
                              f"directory (no {MARKER}); refusing to touch it")
        for name in entries:  # ours: an earlier run's, rebuilt from scratch
            p = os.path.join(path, name)
            shutil.rmtree(p) if os.path.isdir(p) and not os.path.islink(p) else os.unlink(p)
        made = False
    else:
        os.makedirs(path)
        made = True
    with open(os.path.join(path, MARKER), "w") as f:
        f.write("a rehydrate bench directory: `rehydrate bench --dir` may empty it\n")
    return path, made


def _stats(xs: list) -> dict:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def measure(w: Workload, repeat: int, work: str, log=print, bar=None) -> dict:
    """Build under ``work`` and time ``repeat`` rounds; the JSON result."""
    redis = B.redis_available()
    built = build(work, w, redis, progress=bar)
    paths = built["paths"]
    skipped: dict = {}
    if not redis:
        skipped.update({n: "redis-server is not on PATH" for n in B.REDIS_BASELINES})
    else:
        try:
            paths["redis_rdb"] = os.path.join(work, "redis-rdb")
            B.make_rdb(paths["redis_aof"], paths["redis_rdb"])
        except B.BaselineError as e:
            skipped["redis_rdb"] = str(e)
            paths.pop("redis_rdb", None)
    sources = {"python_msgpack_dict": paths["ops"], "pickle_load": paths["pickle"],
               "sqlite": paths["sqlite"]}
    ours: list = []
    theirs: dict = {n: [] for n in B.PYTHON_BASELINES + B.REDIS_BASELINES if n not in skipped}
    for i in range(repeat):
        ours.append(B.run_child("rehydrate", paths["state"]))
        line = [f"rehydrate {ours[-1]['seconds']:.3f} s"]
        for name in list(theirs):
            try:
                if name in sources:
                    r = B.run_child(name, sources[name])
                    if r["keys"] != ours[-1]["keys"]:
                        raise B.BaselineError(f"{name} rebuilt {r['keys']:,} keys, "
                                              f"rehydrate {ours[-1]['keys']:,}")
                    theirs[name].append(r["seconds"])
                else:
                    theirs[name].append(B.time_redis(paths[name], aof=name == "redis_aof"))
            except B.BaselineError as e:
                skipped[name] = str(e)
                del theirs[name]
                continue
            line.append(f"{name} {theirs[name][-1]:.3f} s")
        log(f"  run {i + 1}/{repeat}: " + ", ".join(line))
    total = _stats([r["seconds"] for r in ours])
    phase_names = list(ours[0]["phases"])
    on_disk = built["bytes"]["state"]
    result = {
        "records": built["records"], "keys": built["keys"], "workload": w.as_dict(),
        "repeat": repeat, "core": ours[0]["core"],
        "cold_open_s": total["median"], "cold_open": total,
        "records_per_s": built["records"] / total["median"],
        "mb_per_s": on_disk / total["median"] / 1e6, "state_bytes": on_disk,
        "peak_rss_bytes": statistics.median(r["peak_rss_bytes"] for r in ours),
        "phases": {p: _stats([r["phases"][p] for r in ours]) for p in phase_names},
        "baselines": {n: statistics.median(xs) for n, xs in theirs.items()},
        "baseline_runs": theirs,
        "ratios": {n: total["median"] / statistics.median(xs) for n, xs in theirs.items()},
        "skipped": skipped, "machine": machine(),
    }
    return result


def print_table(r: dict, out=sys.stdout) -> None:
    w = r["workload"]
    print(f"{r['records']:,} records ({':'.join(map(str, w['mix']))} put:incr:delete, "
          f"{w['value_bytes']}-byte values) -> {r['keys']:,} keys, "
          f"{r['state_bytes'] / 1e6:.1f} MB on disk; {r['repeat']} cold opens each, "
          f"fresh processes, medians", file=out)
    print(f"\n  {'phase':<12}{'median':>10}{'min':>10}{'max':>10}", file=out)
    for name, s in r["phases"].items():
        print(f"  {name:<12}{s['median']:>9.3f}s{s['min']:>9.3f}s{s['max']:>9.3f}s", file=out)
    c = r["cold_open"]
    print(f"  {'total':<12}{c['median']:>9.3f}s{c['min']:>9.3f}s{c['max']:>9.3f}s", file=out)
    print(f"\n  rehydrate ({r['core']}): {r['records_per_s'] / 1e6:.2f} M records/s, "
          f"{r['mb_per_s']:.0f} MB/s, peak RSS {r['peak_rss_bytes'] / 2**20:.0f} MiB", file=out)
    if r["baselines"]:
        print(f"\n  {'baseline':<22}{'median':>10}{'rehydrate / it':>16}", file=out)
        for name, s in sorted(r["baselines"].items(), key=lambda kv: kv[1]):
            print(f"  {name:<22}{s:>9.3f}s{r['ratios'][name]:>15.3f}x", file=out)
    for name, why in r["skipped"].items():
        print(f"  {name}: skipped ({why})", file=out)


def plot(r: dict, path: str) -> None:
    """Our phases stacked beside each baseline (PNG, matplotlib)."""
    try:
        import matplotlib
    except ImportError:
        raise ConfigError("--plot needs matplotlib: pip install 'rehydrate[bench]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["rehydrate"] + sorted(r["baselines"], key=r["baselines"].get)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    bottom = 0.0
    total = sum(s["median"] for s in r["phases"].values())
    for phase, s in r["phases"].items():
        if s["median"] < 0.01 * total:
            continue  # too thin to see, and to name
        ax.bar(0, s["median"], bottom=bottom, label=f"rehydrate: {phase}")
        bottom += s["median"]
    for i, name in enumerate(names[1:], start=1):
        ax.bar(i, r["baselines"][name], color="0.6")
        ax.annotate(f"{r['ratios'][name]:.2f}x", (i, r["baselines"][name]),
                    ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
    ax.set_ylabel("cold start, seconds (median)")
    w = r["workload"]
    ax.set_title(f"{r['records']:,} records, {r['keys']:,} keys, {w['value_bytes']} B values "
                 f"(labels: rehydrate / baseline)", fontsize=10)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(args) -> int:
    """The command: exit 0, or 2 for bad parameters / no disk space."""
    import json

    from ..exitcodes import EXIT_OK, EXIT_USAGE

    w = Workload(records=args.records, keys=args.keys, value_bytes=args.value_bytes,
                 mix=args.mix, snapshot_at=args.snapshot_at).check()
    if type(args.repeat) is not int or args.repeat < 1:
        raise ConfigError(f"--repeat must be >= 1, not {args.repeat}")
    work, made = _work_dir(args.dir)
    log = (lambda msg: print(msg, file=sys.stderr))
    bar = None
    try:  # from here on, whatever happens (Ctrl-C too), the data goes
        log(f"rehydrate bench: working in {work}")
        bar = _bar(w.records, not args.json)
        try:
            r = measure(w, args.repeat, work, log=log, bar=bar.update if bar else None)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StorageIOError(f"no space left for the bench data: {e}",
                                     path=work) from e
            raise
        finally:
            if bar is not None:
                bar.close()
        if args.plot:
            plot(r, args.plot)
            r["plot"] = os.path.abspath(args.plot)
        if args.json:
            print(json.dumps(r))
        else:
            print_table(r)
            if args.plot:
                print(f"\n  plot: {r['plot']}")
            if args.keep:
                print(f"  data kept in {work}")
        return EXIT_OK
    except StorageIOError as e:
        print(f"rehydrate bench: {e}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        # Also on Ctrl-C: servers were stopped where they were started.
        if not args.keep:
            if made:
                shutil.rmtree(work, ignore_errors=True)
            else:
                for name in os.listdir(work):
                    if name != MARKER:
                        p = os.path.join(work, name)
                        shutil.rmtree(p, ignore_errors=True) if os.path.isdir(p) \
                            else os.unlink(p)


def _bar(total: int, enabled: bool):
    if not enabled or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="building", unit="op", unit_scale=True, file=sys.stderr,
                leave=False)
