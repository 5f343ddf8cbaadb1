"""Two CPU-bound threads in the main interpreter plus two threads each running a
CPU loop in its own isolated subinterpreter (3.12+: its own GIL).

Truth: the two main-interpreter threads serialize on the main GIL (each waits
about half the time); each subinterpreter has its own GIL and nobody to wait
for, so those GILs see almost no waiting.
Usage: subinterpreters.py [seconds=4]
"""
import sys
import threading
import time

try:
    import _interpreters as interpreters  # 3.13+

    def create():
        return interpreters.create("isolated")

except ImportError:
    import _xxsubinterpreters as interpreters  # 3.12

    def create():
        return interpreters.create(isolated=True)


seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 4.0
deadline = time.monotonic() + seconds
LOOP = f"""
import time
deadline = time.monotonic() + {seconds}
n = 0
while time.monotonic() < deadline:
    for _ in range(1000):
        n += 1
"""


def in_subinterpreter():
    interp = create()
    interpreters.run_string(interp, LOOP)
    interpreters.destroy(interp)


def in_main():
    n = 0
    while time.monotonic() < deadline:
        for _ in range(1000):
            n += 1


threads = [threading.Thread(target=in_subinterpreter, name=f"sub-{i}") for i in range(2)]
threads += [threading.Thread(target=in_main, name=f"main-{i}") for i in range(2)]
for t in threads:
    t.start()
for t in threads:
    t.join()
