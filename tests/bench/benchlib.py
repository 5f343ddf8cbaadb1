"""What the benchmark scripts share: the interpreter they measure by default,
the rate line every workload prints (tests/workloads/rate.py), and the kernel's
run counts of loaded BPF programs (`kernel.bpf_stats_enabled=1`)."""
import glob
import json
import os
import re
import subprocess

# `<per wall second> <unit>/s (<per CPU-second> per CPU-s)`, as rate.py prints it.
RATE = re.compile(r"([\d.]+) (?:round trips|loops|appends)/s \(([\d.]+) per CPU-s\)")


def default_python():
    """pyenv's newest 3.11, else Debian's."""
    pyenv = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.11.*/bin/python3.11")))
    return pyenv[-1] if pyenv else "/usr/bin/python3.11"


def program_totals(names):
    """(runs, ns) summed over the loaded BPF programs named in `names`, from
    `bpftool prog show -j` (counted only while kernel.bpf_stats_enabled=1)."""
    out = subprocess.run(["bpftool", "prog", "show", "-j"], capture_output=True, text=True)
    runs = ns = 0
    for p in json.loads(out.stdout or "[]"):
        if p.get("name") in names:
            runs += p.get("run_cnt", 0)
            ns += p.get("run_time_ns", 0)
    return runs, ns
