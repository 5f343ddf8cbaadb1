"""A single-threaded event loop whose request handlers each run ~30 ms of CPU inline.

One thread, no executor, no other thread at all: on an asyncio (or uvloop)
loop, a client task sends a request over a socket pair and awaits the reply; a
server task reads each request, runs a 30 ms pure-Python handler (`handle`)
inline and writes the reply. While a handler runs, no other callback of the
loop can.

Truth: the loop thread never waits for the GIL (no other thread) and never
needs to sleep long. Every handler runs in the callback of a read that only a
poll-family call can report ready, so there is a poll between two handlers: an
iteration runs at most one handler, and the iterations that run one last
>= 30 ms (the spin is timed by the clock; only preemption makes one longer).
Handlers fill nearly all the time (the client's turn is microseconds).
Usage: inline_cpu_loop.py [seconds=4] [asyncio|uvloop] [handler_ms=30]
"""
import asyncio
import socket
import sys
import time

seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 4.0
kind = sys.argv[2] if len(sys.argv) > 2 else "asyncio"
handler_ms = float(sys.argv[3]) if len(sys.argv) > 3 else 30.0
if kind == "uvloop":
    import uvloop

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
elif kind != "asyncio":
    sys.exit(f"unknown loop {kind!r}: asyncio or uvloop")


def handle(ms):
    """The mistake: CPU-bound work called from a coroutine, on the loop thread."""
    end = time.perf_counter() + ms / 1000
    n = 0
    while time.perf_counter() < end:
        n += 1
    return n


async def server(reader, writer):
    while line := await reader.readline():
        handle(handler_ms)
        writer.write(line)
        await writer.drain()


async def client(reader, writer, deadline):
    handled = 0
    while time.monotonic() < deadline:
        writer.write(b"request\n")
        await writer.drain()
        await reader.readline()
        handled += 1
    writer.close()
    return handled


async def main():
    deadline = time.monotonic() + seconds
    ours, theirs = socket.socketpair()
    served = asyncio.create_task(server(*await asyncio.open_connection(sock=theirs)))
    handled = await client(*await asyncio.open_connection(sock=ours), deadline)
    await served
    print(f"{handled} requests handled", file=sys.stderr)


asyncio.run(main())
