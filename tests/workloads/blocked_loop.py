"""An asyncio event loop blocked by CPU work run inline in coroutines.

The loop thread (the main thread) runs 100 ms pure-Python loops inside a
coroutine, between short awaits, while `loop.run_in_executor` threads run short
Python tasks. The loop still idles in epoll_wait between bursts (so it is
recognizable as the loop), but while a burst runs nothing else on the loop
moves and the executor threads wait for the GIL behind it.
Truth: the main thread holds the GIL in stretches of ~100 ms, uses most of a
core, and the executor threads wait for the GIL behind it.
Usage: blocked_loop.py [seconds=4]
"""
import asyncio
import sys
import time
from concurrent.futures import ThreadPoolExecutor

seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 4.0


def spin(ms):
    end = time.perf_counter() + ms / 1000
    n = 0
    while time.perf_counter() < end:
        n += 1
    return n


async def cpu_inline(deadline):
    # The mistake: CPU-bound work on the loop thread.
    while time.monotonic() < deadline:
        spin(100)
        await asyncio.sleep(0.01)


async def offload(loop, pool, deadline):
    while time.monotonic() < deadline:
        await loop.run_in_executor(pool, spin, 1)
        await asyncio.sleep(0.001)


async def main():
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + seconds
    with ThreadPoolExecutor(max_workers=3, thread_name_prefix="executor") as pool:
        await asyncio.gather(
            cpu_inline(deadline), *(offload(loop, pool, deadline) for _ in range(3))
        )


asyncio.run(main())
