#!/usr/bin/env python3
"""Process churn against `gilscope run`: many short-lived threaded CPython processes.

Spawns --per-minute Python processes a minute for --minutes (each with 2-4
threads, lifetimes spread over 0.5-6 s, a third of them CPU-bound), while
`gilscope run --interval 2s` exports OTLP into a VictoriaMetrics of its own.
Samples the daemon's RSS every 10 s, records each child's lifetime, and at the
end checks, from what the daemon exported (VictoriaMetrics series carrying
process.pid) rather than from its logs:

  * every child that lived >= 2 s was reported;
  * after the last child exited and one more interval passed, the daemon's BPF
    maps (found through its own fds, /proc/PID/fdinfo map_id) hold no entry at
    all (the daemon only watches this run's children), while it still runs;
  * its RSS stayed bounded: below --rss-limit-mb throughout and, in runs of 3
    minutes or more, the last third peaks less than --rss-slack-mb above the
    middle third (the first is warm-up).

Prints a JSON report (the RSS curve, the counts) and exits 1 when a check fails.
Needs root (BPF), bpftool, and tests/receivers/install.sh's VictoriaMetrics.

    sudo python3 tests/stress/churn.py --minutes 10 --per-minute 200
"""

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RECEIVERS = os.environ.get("GILSCOPE_RECEIVERS", "/var/cache/gilscope/receivers")

# A child: N threads, CPU-bound or sleeping, for a given lifetime; the marker in
# argv lets the daemon watch only this run's children.
CHILD = r"""
import sys, threading, time
lifetime, threads, cpu = float(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "cpu"
end = time.monotonic() + lifetime
def work():
    while time.monotonic() < end:
        if cpu:
            sum(range(2000))
        else:
            time.sleep(0.05)
ts = [threading.Thread(target=work) for _ in range(threads - 1)]
for t in ts:
    t.start()
work()
for t in ts:
    t.join()
"""

MAPS = ("targets", "thread_waits", "blocked_by", "inflight", "gil_waits")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, what, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"{what} did not listen on {port}")


def rss_kb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def bpf_ids(pid, kind):
    """The ids of the BPF objects (kind: map_id, prog_id, link_id) pid holds fds of."""
    ids = {}
    fd_dir = f"/proc/{pid}/fdinfo"
    try:
        fds = os.listdir(fd_dir)
    except OSError:
        return ids
    for fd in fds:
        try:
            with open(f"{fd_dir}/{fd}") as f:
                info = dict(
                    line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line
                )
        except OSError:
            continue
        if kind in info:
            ids[int(info[kind])] = info
    return ids


def map_names(pid):
    """name -> map id of the daemon's maps (bpftool shows names, fdinfo does not)."""
    out = {}
    for map_id in bpf_ids(pid, "map_id"):
        shown = subprocess.run(
            ["bpftool", "-j", "map", "show", "id", str(map_id)],
            capture_output=True,
            text=True,
        )
        if shown.returncode == 0:
            out[json.loads(shown.stdout).get("name", "")] = map_id
    return out


def map_entries(map_id):
    dumped = subprocess.run(
        ["bpftool", "-j", "map", "dump", "id", str(map_id)],
        capture_output=True,
        text=True,
    )
    if dumped.returncode != 0:
        return None
    return json.loads(dumped.stdout or "[]")


def vm_pids(vm_port, service, window_s):
    """Every process.pid VictoriaMetrics holds a series of for `service`."""
    query = urllib.parse.urlencode(
        {
            "match[]": f'{{service.name="{service}"}}',
            "start": str(int(time.time() - window_s)),
        }
    )
    url = f"http://127.0.0.1:{vm_port}/api/v1/label/process.pid/values?{query}"
    with urllib.request.urlopen(url, timeout=30) as r:
        return {int(p) for p in json.load(r)["data"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--per-minute", type=int, default=200)
    ap.add_argument("--python", default="/usr/bin/python3.11")
    ap.add_argument("--gilscope", default=os.path.join(ROOT, "target/release/gilscope"))
    ap.add_argument("--interval", default="2s")
    ap.add_argument("--rss-slack-mb", type=float, default=8.0)
    ap.add_argument("--rss-limit-mb", type=float, default=100.0)
    ap.add_argument("--report", help="also write the JSON report here")
    args = ap.parse_args()

    tag = f"churn{os.getpid()}x{random.randrange(1 << 30):x}"
    scratch = tempfile.mkdtemp(prefix="gilscope-churn-")
    vm_port = free_port()
    vm = subprocess.Popen(
        [
            os.path.join(RECEIVERS, "bin/victoria-metrics"),
            f"-storageDataPath={scratch}/vm",
            f"-httpListenAddr=127.0.0.1:{vm_port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(f"{scratch}/vm.log", "w"),
    )
    wait_port(vm_port, "victoria-metrics")
    # The tag early in the command line (the daemon matches a shortened one).
    child_script = f"{scratch}/{tag}.py"
    with open(child_script, "w") as f:
        f.write(CHILD)
    daemon_log = open(f"{scratch}/daemon.log", "w")
    daemon = subprocess.Popen(
        [
            args.gilscope,
            "run",
            "-v",
            "--interval",
            args.interval,
            "--endpoint",
            f"http://127.0.0.1:{vm_port}/opentelemetry",
            "--protocol",
            "http/protobuf",
            "--include-cmdline",
            tag,
        ],
        stdout=daemon_log,
        stderr=subprocess.STDOUT,
    )
    children = {}  # pid -> [Popen, start, end]
    rss = []
    interval_s = float(args.interval.rstrip("s"))
    failures = []
    try:
        time.sleep(2)
        if daemon.poll() is not None:
            sys.exit(f"gilscope run exited at start, see {scratch}/daemon.log")
        started = time.monotonic()
        total = int(args.minutes * args.per_minute)
        gap = 60.0 / args.per_minute
        next_sample = started
        for n in range(total):
            due = started + n * gap
            while True:
                now = time.monotonic()
                if now >= next_sample:
                    rss.append((round(now - started), rss_kb(daemon.pid)))
                    next_sample += 10
                reap(children)
                if now >= due:
                    break
                time.sleep(min(0.05, due - now))
            lifetime = random.uniform(0.5, 6.0)
            threads = random.randint(2, 4)
            kind = "cpu" if random.random() < 1 / 3 else "sleep"
            child = subprocess.Popen(
                [args.python, child_script, f"{lifetime:.2f}", str(threads), kind],
                env={"OTEL_SERVICE_NAME": tag, "PATH": "/usr/bin:/bin"},
                stdout=subprocess.DEVNULL,
            )
            children[child.pid] = [child, time.monotonic(), None]
            if daemon.poll() is not None:
                failures.append("gilscope run died during the churn")
                break
        while any(c[2] is None for c in children.values()):
            reap(children)
            time.sleep(0.05)
        rss.append((round(time.monotonic() - started), rss_kb(daemon.pid)))
        # One more interval (the exited are reported once more, then released), and a margin.
        time.sleep(2 * interval_s + 1)
        if daemon.poll() is not None:
            failures.append("gilscope run died before the final checks")
        names = map_names(daemon.pid)
        leftover = {}
        for name in MAPS:
            if name not in names:
                failures.append(f"map {name} not found among the daemon's fds")
                continue
            entries = map_entries(names[name])
            if entries is None:
                failures.append(f"bpftool cannot dump map {name}")
                continue
            leftover[name] = len(entries)
            if entries:
                failures.append(f"map {name} holds {len(entries)} entries after every child exited")
        elapsed = time.monotonic() - started
        time.sleep(3)  # VictoriaMetrics makes new series searchable within a second or so
        reported = vm_pids(vm_port, tag, elapsed + 120)
        lived = {pid: c[2] - c[1] for pid, c in children.items()}
        long_lived = sorted(p for p, s in lived.items() if s >= 2.0)
        missed = [p for p in long_lived if p not in reported]
        if missed:
            failures.append(
                f"{len(missed)} of {len(long_lived)} processes that lived >= 2 s were not reported: {missed[:20]}"
            )
        # Growth after warm-up: the last third against the middle third.
        middle = [kb for t, kb in rss if kb and elapsed / 3 <= t < elapsed * 2 / 3]
        last = [kb for t, kb in rss if kb and t >= elapsed * 2 / 3]
        growth_mb = (max(last) - max(middle)) / 1024 if middle and last else None
        peak_mb = max((kb for _, kb in rss if kb), default=0) / 1024
        if args.minutes >= 3 and (growth_mb is None or growth_mb > args.rss_slack_mb):
            failures.append(f"RSS grew {growth_mb} MB from the middle to the last third of the run")
        if peak_mb > args.rss_limit_mb:
            failures.append(f"RSS peaked at {peak_mb:.1f} MB (limit {args.rss_limit_mb})")
        with open(f"{scratch}/daemon.log") as f:
            log = f.read()
        report = {
            "minutes": args.minutes,
            "per_minute": args.per_minute,
            "spawned": len(children),
            "lived_ge_2s": len(long_lived),
            "reported_of_those": len(long_lived) - len(missed),
            "reported_total": len(reported & set(children)),
            "rss_kb_curve": rss,
            "rss_growth_mb_middle_to_last_third": growth_mb,
            "rss_peak_mb": round(peak_mb, 1),
            "bpf_entries_after": leftover,
            "daemon_warnings": sum(1 for l in log.splitlines() if " WARN " in l),
            "daemon_log_lines": log.count("\n"),
            "failures": failures,
            "scratch": scratch if failures else None,
        }
        text = json.dumps(report, indent=1)
        print(text)
        if args.report:
            with open(args.report, "w") as f:
                f.write(text)
    finally:
        for c in children.values():
            if c[0].poll() is None:
                c[0].kill()
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(15)
        except subprocess.TimeoutExpired:
            daemon.kill()
        vm.kill()
        vm.wait()
        if not failures:
            shutil.rmtree(scratch, ignore_errors=True)
    sys.exit(1 if failures else 0)


def reap(children):
    for pid, c in children.items():
        if c[2] is None and c[0].poll() is not None:
            c[2] = time.monotonic()


if __name__ == "__main__":
    main()
