"""Pool.map of 1 MiB payloads to a trivial function: the pool is drowned in IPC.

The parent pickles every payload and pushes it through a pipe; each worker
unpickles it, looks at one byte and sends back a small int. The workers mostly
wait for the next task, and the parent's feeder is the bottleneck.
Truth: workers busy well under half of the time; the parent busy most of it.
Usage: pool_overhead.py [workers=4] [seconds=5]
"""
import multiprocessing
import sys
import time


def first_byte(payload):
    return payload[0]


def main():
    workers = int(sys.argv[1]) if len(sys.argv) > 1 else 4
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 5.0
    # A list of small ints pickles slowly (one opcode per element): ~1 MiB on the wire.
    payload = list(range(200_000))
    tasks = [payload] * 16
    calls = 0
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            calls += len(pool.map(first_byte, tasks, chunksize=1))
    print(f"{calls / seconds:.0f} calls/s")


if __name__ == "__main__":
    main()
