"""N threads taking turns on one threading.Lock, sleeping while they hold it.

On 3.14+ a threading.Lock is a PyMutex (3.13's still sleeps on a semaphore of
its own): a thread that finds it taken parks in _PyParkingLot_Park with the GIL
released. The holder sleeps, so the GIL is free almost all the time. Truth: lock contention, not GIL contention; with 4 threads
about 3 of them wait for the lock at any moment (Σ lock wait ≈ 3 × wall) and
GIL waits are near zero.
Usage: lock_threads.py [threads=4] [seconds=3]
"""
import sys
import threading
import time

threads = int(sys.argv[1]) if len(sys.argv) > 1 else 4
seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 3.0
deadline = time.monotonic() + seconds
lock = threading.Lock()
turns = [0] * threads


def worker(index):
    while time.monotonic() < deadline:
        with lock:
            time.sleep(0.002)
        turns[index] += 1


workers = [threading.Thread(target=worker, args=(i,), name=f"locker-{i}") for i in range(threads)]
for w in workers:
    w.start()
for w in workers:
    w.join()
print(f"{sum(turns)} turns, per thread {turns}")
