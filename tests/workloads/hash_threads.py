"""N threads hashing 8 MiB buffers: hashlib releases the GIL, so they run in parallel.

Truth: on 2 cores, 2 threads reach an effective parallelism near 2.
Usage: hash_threads.py [threads=2] [seconds=3]
"""
import hashlib
import sys
import threading
import time

threads = int(sys.argv[1]) if len(sys.argv) > 1 else 2
seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 3.0
deadline = time.monotonic() + seconds
buffer = bytes(8 * 1024 * 1024)


def hasher():
    while time.monotonic() < deadline:
        hashlib.sha256(buffer).digest()


workers = [threading.Thread(target=hasher, name=f"hash-{i}") for i in range(threads)]
for w in workers:
    w.start()
for w in workers:
    w.join()
