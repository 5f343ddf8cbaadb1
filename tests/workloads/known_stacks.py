"""Threads that sit in known functions at known lines, for the stack-reader tests.

Truth, by construction (the lines are found by the `# MARK:` comments, so
editing this file cannot make the tests wrong):
- the main thread: `<module>` (at CALL-MAIN) -> `main` (at CALL-WAIT) ->
  `wait_for_workers`, asleep in `time.sleep` at SLEEP-MAIN for the whole run;
- `spinner`: threading's bootstrap -> `run_spinner` (at CALL-ONE) -> `level_one`
  (at CALL-TWO) -> `level_two` (at CALL-SPIN) -> `spin`, running CPU-bound
  Python between SPIN-START and SPIN-END and calling no Python function there;
- `sleeper`: threading's bootstrap -> `Sleeper.run` (at CALL-NAPS) ->
  `Sleeper.naps`, a generator asleep at SLEEP-NAP (3.8-3.10 name them `run`
  and `naps`: qualified names came with 3.11).
Each thread prints `ready ROLE TID` (its native id) before it settles;
the process exits after SECONDS.
Usage: known_stacks.py [seconds=30]
"""
import sys
import threading
import time

seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 30.0
printing = threading.Lock()


def ready(role):
    # One line per write, under a lock: threads' prints must not interleave.
    with printing:
        sys.stdout.write("ready %s %d\n" % (role, threading.get_native_id()))
        sys.stdout.flush()


def spin():
    x = 0
    while True:  # MARK: SPIN-START
        for i in range(1000):
            x += i * i
        x %= 1000003  # MARK: SPIN-END


def level_two():
    spin()  # MARK: CALL-SPIN


def level_one():
    level_two()  # MARK: CALL-TWO


def run_spinner():
    ready("spinner")
    level_one()  # MARK: CALL-ONE


class Sleeper:
    def naps(self):
        while True:
            time.sleep(3600)  # MARK: SLEEP-NAP
            yield

    def run(self):
        ready("sleeper")
        for _ in self.naps():  # MARK: CALL-NAPS
            pass


def wait_for_workers():
    ready("main")
    time.sleep(seconds)  # MARK: SLEEP-MAIN


def main():
    threading.Thread(target=run_spinner, name="spinner", daemon=True).start()
    threading.Thread(target=Sleeper().run, name="sleeper", daemon=True).start()
    wait_for_workers()  # MARK: CALL-WAIT


main()  # MARK: CALL-MAIN
