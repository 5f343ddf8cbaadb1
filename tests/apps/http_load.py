"""A small HTTP/1.1 load generator: CONNECTIONS keep-alive connections, each
sending GET requests for its path back to back (the paths are dealt to the
connections in turn), for SECONDS; prints requests/s and the mean latency.

Usage: http_load.py PORT SECONDS CONNECTIONS PATH [PATH...]
Only the standard library, so any interpreter runs it; a separate process from
the server, so the server's GIL is its own.
"""
import asyncio
import sys
import time


async def connection(port, path, deadline, done, latencies):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
    try:
        while time.monotonic() < deadline:
            start = time.monotonic()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
            latencies.append(time.monotonic() - start)
            done[path] = done.get(path, 0) + 1
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def main(port, seconds, connections, paths):
    deadline = time.monotonic() + seconds
    done, latencies = {}, []
    await asyncio.gather(
        *(connection(port, paths[i % len(paths)], deadline, done, latencies)
          for i in range(connections))
    )
    mean_ms = 1000 * sum(latencies) / max(len(latencies), 1)
    print(f"{len(latencies) / seconds:.1f} requests/s, mean latency {mean_ms:.1f} ms, {done}")


if len(sys.argv) < 5:
    sys.exit(__doc__)
asyncio.run(main(int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]))
