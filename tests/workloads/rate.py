"""The rate a workload prints when it ends, in the one format the overhead
benchmarks parse (tests/bench/overhead.py, spans_overhead.py):
`<per second of wall time> <unit>/s (<per CPU-second> per CPU-s)`.
"""
import time


class Rate:
    """The process's wall and CPU clocks from its creation to `report`."""

    def __init__(self):
        self.cpu_start = time.process_time()
        self.start = time.perf_counter()

    def report(self, done, unit):
        """Prints `done` units of work per wall second and per CPU-second."""
        elapsed = time.perf_counter() - self.start
        cpu = time.process_time() - self.cpu_start
        print(f"{done / elapsed:.0f} {unit}/s ({done / cpu:.0f} per CPU-s)")
