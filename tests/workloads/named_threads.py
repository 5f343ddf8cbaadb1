"""Threads with the names the program gave them, for the thread-name tests.

Truth: the main thread is `MainThread`; N CPU-bound threads are `cpu-0`…`cpu-{N-1}`;
a ThreadPoolExecutor(thread_name_prefix="pool") runs two tasks on `pool_0`, `pool_1`;
a thread started with `_thread` (not by `threading`) that asks for its current
thread is registered as a `_DummyThread` named `Dummy-1`. None of them renames the
OS thread, so every `comm` stays the interpreter's.
Usage: named_threads.py [workers=2] [seconds=2]
"""
import _thread
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

workers = int(sys.argv[1]) if len(sys.argv) > 1 else 2
seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 2.0
deadline = time.monotonic() + seconds


# Every thread lives at least MIN_LIFE seconds from its own start, so a thread
# that starts late on a loaded machine is still seen by several 100 ms ticks.
MIN_LIFE = 0.5


def until():
    return max(deadline, time.monotonic() + MIN_LIFE)


def spin():
    end = until()
    n = 0
    while time.monotonic() < end:
        for _ in range(1000):
            n += 1
    return n


def pooled(barrier):
    barrier.wait()  # both tasks run at once, so the pool must start two threads
    return spin()


def dummy(done):
    threading.current_thread()  # registers a _DummyThread in threading._active
    end = until()
    while time.monotonic() < end:
        time.sleep(0.01)
    done.release()


cpu = [threading.Thread(target=spin, name=f"cpu-{i}") for i in range(workers)]
for t in cpu:
    t.start()
done = _thread.allocate_lock()
done.acquire()
_thread.start_new_thread(dummy, (done,))
with ThreadPoolExecutor(max_workers=2, thread_name_prefix="pool") as pool:
    both = threading.Barrier(2)
    tasks = [pool.submit(pooled, both) for _ in range(2)]
for t in cpu:
    t.join()
done.acquire()
print(sorted(t.name for t in threading.enumerate()))
