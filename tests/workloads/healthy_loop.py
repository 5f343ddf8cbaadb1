"""A healthy, busy event loop: an asyncio (or uvloop) server answering many
short requests, and the client that keeps it busy, as two processes.

  healthy_loop.py serve PORTFILE [seconds=4] [asyncio|uvloop]
      One thread, one loop: an echo server on 127.0.0.1 (an ephemeral port,
      written to PORTFILE once listening). Each request costs microseconds of
      Python (read a line, reverse it, write it back), so every iteration of
      the loop is short however busy the loop is.
  healthy_loop.py load PORT [connections=50] [seconds=4]
      Keeps CONNECTIONS connections in request/response round trips with the
      server as fast as it answers; prints the requests per second.

Truth: the server's loop thread iterates thousands of times a second, never
sleeps long and runs no long callback: it is busy, not blocked, and must never
be diagnosed event_loop_blocked. The client is a separate process so that no
other thread of the server competes for its GIL.
"""
import asyncio
import sys
import time


def loop_policy(kind):
    if kind == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    elif kind != "asyncio":
        sys.exit(f"unknown loop {kind!r}: asyncio or uvloop")


async def echo(reader, writer):
    try:
        while line := await reader.readline():
            writer.write(line[-2::-1] + b"\n")
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def serve(portfile, seconds):
    server = await asyncio.start_server(echo, "127.0.0.1", 0, backlog=1024)
    port = server.sockets[0].getsockname()[1]
    with open(portfile + ".tmp", "w") as f:
        f.write(str(port))
    # Renamed into place: a reader never sees a half-written port.
    import os

    os.replace(portfile + ".tmp", portfile)
    async with server:
        await asyncio.sleep(seconds)


async def client(port, deadline, counts, i):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    n = 0
    while time.monotonic() < deadline:
        writer.write(b"hello event loop %d\n" % n)
        await writer.drain()
        if not await reader.readline():
            break
        n += 1
    counts[i] = n
    writer.close()


async def load(port, connections, seconds):
    deadline = time.monotonic() + seconds
    counts = [0] * connections
    await asyncio.gather(*(client(port, deadline, counts, i) for i in range(connections)))
    print(f"{sum(counts) / seconds:.0f} requests/s over {connections} connections")


def main():
    role = sys.argv[1] if len(sys.argv) > 1 else ""
    if role == "serve" and len(sys.argv) > 2:
        seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 4.0
        loop_policy(sys.argv[4] if len(sys.argv) > 4 else "asyncio")
        asyncio.run(serve(sys.argv[2], seconds))
    elif role == "load" and len(sys.argv) > 2:
        connections = int(sys.argv[3]) if len(sys.argv) > 3 else 50
        seconds = float(sys.argv[4]) if len(sys.argv) > 4 else 4.0
        asyncio.run(load(int(sys.argv[2]), connections, seconds))
    else:
        sys.exit(__doc__)


main()
