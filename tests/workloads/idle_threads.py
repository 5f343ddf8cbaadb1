"""N threads that wake every 100 ms for a little work: a quiet service.

Used by the `gilscope run` overhead benchmark to have many threads to watch
without loading the machine. Usage: idle_threads.py [threads=20] [seconds=60] [tag]
"""
import sys
import threading
import time

threads = int(sys.argv[1]) if len(sys.argv) > 1 else 20
seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 60.0
deadline = time.monotonic() + seconds


def work():
    while time.monotonic() < deadline:
        sum(range(200))
        time.sleep(0.1)


workers = [threading.Thread(target=work, name=f"idle-{i}") for i in range(threads)]
for w in workers:
    w.start()
for w in workers:
    w.join()
