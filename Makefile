# The two commands a newcomer needs:
#   make demo   set up this machine, build, and measure a bundled 4-thread workload
#   make test   set up this machine and run every test (needs root for the BPF tests)

PYTHON ?= $(shell command -v python3 || echo /usr/bin/python3)

.PHONY: setup build demo test bench
setup:
	bash tests/setup.sh

build: setup
	cargo build --release

demo: build
	./target/release/gilscope check -- $(PYTHON) tests/workloads/cpu_threads.py 4 5

test: setup
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings
	cargo test --workspace

bench: build
	python3 tests/bench/overhead.py --pairs 7
