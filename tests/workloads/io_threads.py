"""N threads blocked on I/O most of the time: no GIL contention.

Each worker reads from its own pipe; the main thread writes one byte to every
pipe every 10 ms. Truth: the GIL is free almost all the time.
Usage: io_threads.py [threads=8] [seconds=3]
"""
import os
import sys
import threading
import time

threads = int(sys.argv[1]) if len(sys.argv) > 1 else 8
seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 3.0
pipes = [os.pipe() for _ in range(threads)]


def reader(fd):
    while os.read(fd, 1) != b"q":
        pass


workers = [
    threading.Thread(target=reader, args=(r,), name=f"io-{i}") for i, (r, _) in enumerate(pipes)
]
for w in workers:
    w.start()
deadline = time.monotonic() + seconds
while time.monotonic() < deadline:
    for _, wfd in pipes:
        os.write(wfd, b"x")
    time.sleep(0.01)
for _, wfd in pipes:
    os.write(wfd, b"q")
for w in workers:
    w.join()
