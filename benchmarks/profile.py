#!/usr/bin/env python3
"""Where plasmd spends its CPU per job: a py-spy profile of the node under load.

It starts a real plasmd, gives it the hello module once, and then drives
Submit by hash → verified receipt from a separate client process (the load
worker of benchmarks/local.py) while `py-spy record` samples the daemon's
threads, by default the one holding the GIL: plasmd is one GIL-bound
process, so that is where its CPU per job goes. It prints the daemon's CPU
per job, and the functions that hold the most samples, by their own time
(the leaf of the stack) and by their inclusive time (anywhere on the stack).
The raw stacks are kept in `artifacts/profile/` (collapsed format:
`flamegraph.pl` or speedscope read it).

Usage:
    python benchmarks/profile.py                  # 10 s at concurrency 16
    python benchmarks/profile.py --quick          # 3 s
    python benchmarks/profile.py --concurrency 1 --seconds 5 --top 40

py-spy (pinned in requirements/dev.txt) attaches with ptrace: run it as
root, or where ptrace of one's own processes is allowed. It exits 0 when it
could measure and 1 when it could not.
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

import local  # noqa: E402  (benchmarks/local.py: plasmd and its load workers)

PY_SPY: Final = Path(sys.executable).with_name("py-spy")
RATE_HZ: Final = 250


def _frame(frame: str) -> str:
    """`function (path/to/module.py:line)` -> `module.py:function` (lines differ per sample)."""
    name, _, where = frame.partition(" (")
    path = where.rsplit(":", 1)[0]
    for marker in ("/plasm_grpc/", "/site-packages/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{path}:{name}" if path else name


def summarise(raw: Path, top: int) -> tuple[int, list[tuple[str, int]], list[tuple[str, int]]]:
    """Total samples, and the `top` functions by own and by inclusive samples."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        # The first frame is the thread ("process 123:..." / "thread (0x...)"); skip it.
        frames = [_frame(f) for f in stack.split(";")[1:] if f]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
    return total, own.most_common(top), inclusive.most_common(top)


def main() -> int:
    cli = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cli.add_argument("--quick", action="store_true", help="3 s of load")
    cli.add_argument("--seconds", type=float, help="seconds of load to sample (default 10)")
    cli.add_argument("--concurrency", type=int, default=16, help="calls in flight (default 16)")
    cli.add_argument("--top", type=int, default=25, help="functions to list (default 25)")
    cli.add_argument(
        "--on-cpu",
        action="store_true",
        help="every thread py-spy sees as running, not only the one holding the GIL "
        "(threads waiting in C, e.g. an idle executor thread, count too)",
    )
    cli.add_argument("--out", type=Path, default=ROOT / "artifacts" / "profile")
    opts = cli.parse_args()
    seconds = opts.seconds or (3.0 if opts.quick else 10.0)
    if not PY_SPY.exists() and shutil.which("py-spy") is None:
        print("profile: py-spy is not installed (scripts/install-deps.sh)", file=sys.stderr)
        return 1
    spy = str(PY_SPY) if PY_SPY.exists() else "py-spy"
    module = local.HELLO.read_bytes()
    opts.out.mkdir(parents=True, exist_ok=True)
    raw = opts.out / "plasmd-submit-by-hash.txt"
    with tempfile.TemporaryDirectory(prefix="plasm-profile-") as tmp:
        daemon = local.start_plasmd(Path(tmp), [sys.executable, "-m", "plasm_grpc.daemon.main"])
        try:
            import asyncio

            asyncio.run(local.probe_sizes(daemon, module))  # the node now holds hello
            spec = local.WorkerSpec(
                target="submit",
                address=daemon.address,
                concurrency=opts.concurrency,
                warmup_s=1.0,
                duration_s=seconds,
                node_id=daemon.node_id,
            )
            recorder = subprocess.Popen(
                [
                    spy,
                    "record",
                    "--pid",
                    str(daemon.proc.pid),
                    "--rate",
                    str(RATE_HZ),
                    "--duration",
                    str(int(seconds + 1)),
                    "--format",
                    "raw",
                    "--threads",
                    *([] if opts.on_cpu else ["--gil"]),
                    "--output",
                    str(raw),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            time.sleep(0.5)  # py-spy attaches
            fig = local.run_load("profile", spec, clients=1, server_pid=daemon.proc.pid)
            _, err = recorder.communicate(timeout=seconds + 60)
            if recorder.returncode != 0 or not raw.exists():
                print(f"profile: py-spy failed: {err.strip()[-2000:]}", file=sys.stderr)
                return 1
        finally:
            local.stop_plasmd(daemon)
    total, own, inclusive = summarise(raw, opts.top)
    print(
        f"plasmd under Submit(by hash)→verified receipt, concurrency {opts.concurrency}, "
        f"{seconds:g} s: {fig.count} jobs, {fig.per_s:.0f} jobs/s, p50 {fig.p50_ms:.3f} ms, "
        f"plasmd CPU {local.fmt(fig.server_cpu_ms_per_op)} ms per job"
    )
    what = "on CPU" if opts.on_cpu else "holding the GIL"
    print(f"{total} samples at {RATE_HZ} Hz of threads {what}; raw stacks: {raw}")
    if not opts.on_cpu and fig.server_cpu_ms_per_op and fig.per_s:
        # The GIL is held this share of the time, while the daemon's CPU use is
        # (CPU per job x jobs/s) cores: the rest runs in native code outside it.
        held = total / (RATE_HZ * int(seconds + 1))
        cores = fig.server_cpu_ms_per_op * fig.per_s / 1000
        print(
            f"the GIL was held {100 * held:.0f}% of the time while plasmd used {cores:.2f} cores: "
            f"about {100 * max(0.0, 1 - held / cores):.0f}% of its CPU ran outside the GIL "
            "(grpcio's C core, wasmtime, SQLite, hashing)"
        )
    for title, rows in (("own time (leaf frames)", own), ("inclusive time", inclusive)):
        print(f"\n{title}:")
        for name, count in rows:
            print(f"  {100 * count / max(total, 1):5.1f}%  {name}")
    summary = {
        "jobs": fig.count,
        "jobs_per_s": fig.per_s,
        "plasmd_cpu_ms_per_job": fig.server_cpu_ms_per_op,
        "samples": total,
        "own": own,
        "inclusive": inclusive,
    }
    (opts.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", "utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
