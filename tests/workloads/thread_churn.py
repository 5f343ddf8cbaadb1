"""A long-lived process whose threads come and go, like a thread-per-request server.

Usage: thread_churn.py CHURN_S PER_S [KEEPERS] [TAIL_S]

KEEPERS long-lived CPU-bound threads (default 1) contend for the GIL the whole
time. For CHURN_S seconds the main thread starts PER_S short threads a second;
each sleeps 1 ms (so the kernel counts it), computes a few milliseconds
(waiting for the GIL) and exits unjoined.
Then TAIL_S seconds (default 0) with the keepers only. Prints the number of
short threads started, then exits.
"""
import sys
import threading
import time

churn_s = float(sys.argv[1])
per_s = int(sys.argv[2])
keepers = int(sys.argv[3]) if len(sys.argv) > 3 else 1
tail_s = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
stop = threading.Event()


def keep():
    while not stop.is_set():
        sum(range(10_000))


def request():
    time.sleep(0.001)  # a request reads before it computes: every thread sleeps once
    sum(range(30_000))


workers = [threading.Thread(target=keep, name=f"keeper-{i}") for i in range(keepers)]
for w in workers:
    w.start()
start = time.monotonic()
started = 0
while (now := time.monotonic()) - start < churn_s:
    due = int((now - start) * per_s)
    # Behind schedule on a busy machine: catch up, but never past the churn time.
    while started < due and time.monotonic() - start < churn_s:
        threading.Thread(target=request, name=f"req-{started}", daemon=True).start()
        started += 1
    time.sleep(0.002)
time.sleep(tail_s)
stop.set()
for w in workers:
    w.join()
print(started, flush=True)
