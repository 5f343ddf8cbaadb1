#!/usr/bin/env python3
"""Thread churn inside one long-lived process, against `gilscope run`.

Runs tests/workloads/thread_churn.py (one CPU-bound keeper thread, and
--per-second short threads a second, each sleeping 1 ms and computing a few ms,
as a thread-per-request server does) for --minutes, under
`gilscope run --interval 5s` watching only it. Every 30 s samples the daemon's
RSS and the entries of its `thread_waits` and `blocked_by` BPF maps (through its
own fds and bpftool), and at the end checks that

  * the kernel entries stayed bounded (the exited threads' entries are released
    while the process runs: at most --entries-limit at any sample), and fell to
    the live threads' once the churn stopped and the retirement delay passed;
  * the daemon's RSS stayed bounded (the last third peaks less than
    --rss-slack-mb above the middle third).

Prints a JSON report (the curves, the counts) and exits 1 when a check fails.
Needs root (BPF) and bpftool.

    sudo python3 tests/stress/thread_churn.py --minutes 10 --per-second 200
"""

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from churn import ROOT, map_entries, map_names, rss_kb  # noqa: E402

RETIRE_AFTER_S = 30  # agent/src/core/retire.rs


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--per-second", type=int, default=200)
    ap.add_argument("--gilscope", default=os.path.join(ROOT, "target/release/gilscope"))
    ap.add_argument("--python", default="/usr/bin/python3.11")
    ap.add_argument("--entries-limit", type=int, default=5000)  # measured peak: 2747
    ap.add_argument("--rss-slack-mb", type=float, default=8)
    args = ap.parse_args()

    churn_s = int(args.minutes * 60)
    tail_s = RETIRE_AFTER_S + 20
    workload = subprocess.Popen(
        [
            args.python,
            os.path.join(ROOT, "tests/workloads/thread_churn.py"),
            str(churn_s),
            str(args.per_second),
            "1",
            str(tail_s),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    daemon = subprocess.Popen(
        [
            args.gilscope,
            "run",
            "--interval",
            "5s",
            "--include-cmdline",
            "thread_churn",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    start = time.monotonic()
    curve = []
    try:
        while workload.poll() is None:
            time.sleep(30 if time.monotonic() - start < churn_s else 10)
            maps = map_names(daemon.pid)
            sample = {"t_s": round(time.monotonic() - start), "rss_mb": None}
            rss = rss_kb(daemon.pid)
            if rss is not None:
                sample["rss_mb"] = round(rss / 1024, 1)
            for name in ("thread_waits", "blocked_by"):
                entries = map_entries(maps[name]) if name in maps else None
                sample[name] = None if entries is None else len(entries)
            curve.append(sample)
            print(json.dumps(sample), file=sys.stderr, flush=True)
    finally:
        started = (workload.communicate()[0] or "0").strip()
        daemon.terminate()
        _, err = daemon.communicate(timeout=30)

    during = [s for s in curve if s["t_s"] <= churn_s and s["thread_waits"] is not None]
    after = [s for s in curve if s["t_s"] > churn_s + RETIRE_AFTER_S + 10]
    rss = [s["rss_mb"] for s in curve if s["rss_mb"] is not None and s["t_s"] <= churn_s]
    third = max(len(rss) // 3, 1)
    report = {
        "threads_started": int(started) if started.isdigit() else None,
        "churn_s": churn_s,
        "thread_waits_max_during": max((s["thread_waits"] for s in during), default=None),
        "thread_waits_after": [s["thread_waits"] for s in after],
        "rss_mb_middle_third_max": max(rss[third : 2 * third], default=None),
        "rss_mb_last_third_max": max(rss[2 * third :], default=None),
        "daemon_warnings": sum(1 for line in err.splitlines() if " WARN " in line),
        "curve": curve,
    }
    failures = []
    if report["thread_waits_max_during"] is None:
        failures.append("the daemon's thread_waits map was never found")
    elif report["thread_waits_max_during"] > args.entries_limit:
        failures.append(f"thread_waits grew to {report['thread_waits_max_during']} entries")
    if not after or any(n is None or n > 4 for n in report["thread_waits_after"]):
        failures.append(f"entries left after the churn: {report['thread_waits_after']}")
    if (
        report["rss_mb_middle_third_max"] is not None
        and report["rss_mb_last_third_max"] is not None
        and report["rss_mb_last_third_max"] - report["rss_mb_middle_third_max"] > args.rss_slack_mb
    ):
        failures.append("RSS grew in the last third")
    report["failures"] = failures
    print(json.dumps(report, indent=1))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
