"""Two threads spinning in two named functions, one thread sleeping 1 ms in a loop.

Truth by construction: the GIL is held almost all the time by spin_alpha or
spin_beta, alternating every switch interval, so the GIL waits of every thread
(the sleeper's retakes and each spinner's waits behind the other) are spent
behind those two functions, about half each; the sleeper (nap) holds it only
for microseconds between its sleeps. Prints each function's code object address
(id(f.__code__)) and bytecode length, then "ready", before any thread starts,
so an observer can check captured stacks against them.
Usage: holders.py [seconds=3]
"""
import sys
import threading
import time

seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 3.0
start_gate = threading.Event()


def spin_alpha():
    start_gate.wait()
    n = 0
    while time.monotonic() < deadline:
        for _ in range(1000):
            n += 1


def spin_beta():
    start_gate.wait()
    n = 0
    while time.monotonic() < deadline:
        for _ in range(1000):
            n += 1


def nap():
    start_gate.wait()
    while time.monotonic() < deadline:
        time.sleep(0.001)


functions = (spin_alpha, spin_beta, nap)
for f in functions:
    print(f"{f.__name__} code={id(f.__code__):#x} bytes={len(f.__code__.co_code)}")
print("ready", flush=True)
# Starts when the observer writes a line (or at once if stdin is closed).
sys.stdin.readline()
deadline = time.monotonic() + seconds
threads = [threading.Thread(target=f, name=f.__name__) for f in functions]
for t in threads:
    t.start()
start_gate.set()
for t in threads:
    t.join()
