#!/usr/bin/env bash
# Fuzzes every gilscope parser of outside input with cargo-fuzz (libFuzzer),
# two targets at a time, SECONDS each (default 600), and prints per target the
# inputs executed and the crashes found (files under fuzz/artifacts/<target>/).
#   fuzz/run.sh [SECONDS] [TARGET...]
# Needs `cargo install cargo-fuzz` (crates.io, ~2 min). Works on stable Rust:
# RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass its -Z flags; the sanitizer is
# AddressSanitizer unless FUZZ_SANITIZER=none. Corpora come from fuzz/seed.sh
# (run first if fuzz/corpus/ is missing). Exits 1 if any target crashed.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-600}"
shift || true
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(elf_inspect disasm_finder proc_parsers config spool_file memory_walkers collector_answers)
sanitizer="${FUZZ_SANITIZER:-address}"
jobs="${FUZZ_JOBS:-2}"
export RUSTC_BOOTSTRAP=1

command -v cargo-fuzz >/dev/null || { echo "cargo-fuzz missing: cargo install cargo-fuzz" >&2; exit 2; }
[[ -d corpus ]] || ./seed.sh
mkdir -p logs
cargo fuzz build -O --debug-assertions --sanitizer "$sanitizer" >logs/build.log 2>&1 ||
    { tail -30 logs/build.log >&2; exit 2; }

run_one() {
    local t=$1
    mkdir -p "corpus/$t" "artifacts/$t"
    # -timeout: one input taking 30 s is a hang; -rss_limit_mb: a bounded parser stays small.
    cargo fuzz run -O --debug-assertions --sanitizer "$sanitizer" "$t" "corpus/$t" -- \
        -max_total_time="$seconds" -print_final_stats=1 -timeout=30 -rss_limit_mb=4096 \
        >"logs/$t.log" 2>&1 || true
}

running=0
for t in "${targets[@]}"; do
    run_one "$t" &
    running=$((running + 1))
    if [[ $running -ge $jobs ]]; then
        wait -n || true
        running=$((running - 1))
    fi
done
wait

crashed=0
printf '%-14s %8s %14s %10s %8s\n' target seconds executions exec/s crashes
for t in "${targets[@]}"; do
    execs=$(grep -ao 'stat::number_of_executed_units: *[0-9]*' "logs/$t.log" | grep -ao '[0-9]*$' | tail -1)
    if [[ -z "$execs" ]]; then # killed before the final stats: the last status line
        execs=$(grep -ao '^#[0-9]*' "logs/$t.log" | tail -1 | tr -d '#')
    fi
    crashes=$(find "artifacts/$t" -type f \( -name 'crash-*' -o -name 'timeout-*' -o -name 'oom-*' -o -name 'leak-*' \) | wc -l)
    [[ "$crashes" -eq 0 ]] || crashed=1
    printf '%-14s %8s %14s %10s %8s\n' "$t" "$seconds" "${execs:-?}" "$(( ${execs:-0} / seconds ))" "$crashes"
done
exit "$crashed"
