"""A FastAPI app under uvicorn whose `async def` handler runs ~40 ms of CPU inline.

The mistake issue 13 found unseen in a real app: `/compute` is declared
`async def`, so FastAPI runs it on the event loop's thread, and its 40 ms of
pure Python (`checksum`) keeps every other request on the loop waiting. `/fast`
is a healthy async handler, `/sync` a plain `def` handler that FastAPI runs in
AnyIO's thread pool (its threads wait for the GIL behind the loop).

Usage: fastapi_app.py PORT [asyncio|uvloop] [compute_ms=40]
Truth: under load on /compute, uvicorn's loop (the main thread) runs one
~40 ms handler per iteration back to back: lag p99 and max ≈ 40 ms, blocked
most of the time.
"""
import sys
import time

import uvicorn
from fastapi import FastAPI

port = int(sys.argv[1])
loop = sys.argv[2] if len(sys.argv) > 2 else "asyncio"
compute_ms = float(sys.argv[3]) if len(sys.argv) > 3 else 40.0
app = FastAPI()


def checksum(ms):
    """CPU-bound work, timed by the clock so its length is known."""
    end = time.perf_counter() + ms / 1000
    n = 0
    while time.perf_counter() < end:
        n = (n * 31 + 7) % 1_000_003
    return n


@app.get("/compute")
async def compute():
    return {"checksum": checksum(compute_ms)}


@app.get("/fast")
async def fast():
    return {"ok": True}


@app.get("/sync")
def sync_handler():
    return {"checksum": checksum(1)}


uvicorn.run(app, host="127.0.0.1", port=port, loop=loop, log_level="warning", access_log=False)
