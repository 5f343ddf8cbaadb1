# The two commands a newcomer needs:
#   make demo   set up this machine, build, and measure a bundled 4-thread workload
#   make test   set up this machine (build CPython 3.13t and 3.13-musl, fetch 3.14 once), run every test (root)

PYTHON ?= $(shell command -v python3 || echo /usr/bin/python3)

.PHONY: setup interpreters receivers apps build demo test bench
setup:
	bash tests/setup.sh

# Free-threaded CPython 3.13t and a musl-linked 3.13 (Alpine-style) from Debian's
# source package, cached in /var/cache/gilscope/cpython (~2-3 min each the first
# time, seconds after); and Debian sid's binary CPython 3.14 (no source is served
# for it), unpacked with sid's libc and run through sid's loader, cached in
# /var/cache/gilscope/debian-python.
interpreters: setup
	bash tests/interpreters/build-cpython.sh 3.13t 3.13-musl
	bash tests/interpreters/fetch-debian-python.sh 3.14

# rotel and VictoriaMetrics for the `gilscope run` end-to-end tests, cached in
# /var/cache/gilscope/receivers.
receivers:
	bash tests/receivers/install.sh

# Python applications from PyPI the end-to-end tests run (uvloop, FastAPI and
# uvicorn), in a venv of
# pyenv's 3.11 cached in /var/cache/gilscope/apps.
apps:
	bash tests/apps/install.sh

build: setup
	cargo build --release

demo: build
	./target/release/gilscope check -- $(PYTHON) tests/workloads/cpu_threads.py 4 5

test: setup interpreters receivers apps
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings
	cargo test --workspace --no-fail-fast

bench: build
	python3 tests/bench/overhead.py --pairs 7
