"""GIL residual latency: a thread that sleeps 1 ms in a loop next to a spinner.

Every time the sleeper wakes it must retake the GIL, which the spinner holds;
it gets it only when the spinner is forced to drop it, after the switch
interval (5 ms by default). Truth: the sleeper's median retake wait is about
the switch interval (>= 1 ms), although it never computes anything.
Usage: residual.py [seconds=3]
"""
import sys
import threading
import time

seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 3.0
deadline = time.monotonic() + seconds


def spinner():
    n = 0
    while time.monotonic() < deadline:
        for _ in range(1000):
            n += 1


def sleeper():
    wakes = 0
    while time.monotonic() < deadline:
        time.sleep(0.001)
        wakes += 1
    print(f"sleeper woke {wakes} times", file=sys.stderr)


threads = [
    threading.Thread(target=spinner, name="spinner"),
    threading.Thread(target=sleeper, name="sleeper"),
]
for t in threads:
    t.start()
for t in threads:
    t.join()
