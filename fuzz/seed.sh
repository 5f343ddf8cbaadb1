#!/usr/bin/env bash
# Builds fuzz/corpus/<target>/ (not committed) from the committed small seeds
# in fuzz/seeds/ plus real files of this machine: CPython interpreters (pyenv,
# /usr/bin/python3.11, stripped copies), /proc and cgroup files of running
# processes, and the repo's YAML examples.
#   fuzz/seed.sh            build the corpora
#   fuzz/seed.sh --elf      also rebuild the committed fake-interpreter ELF seeds
set -euo pipefail
cd "$(dirname "$0")"
corpus=corpus
mkdir -p "$corpus"/{elf_inspect,disasm_finder,proc_parsers,config,spool_file,memory_walkers,collector_answers}

# The committed ELF seeds: a few KiB each, from seeds/fake_interpreter.c.
if [[ "${1:-}" == "--elf" ]]; then
    gcc -O2 -fPIC -shared -o seeds/elf_inspect/fake313.so seeds/fake_interpreter.c -lpthread
    strip --strip-all -o seeds/elf_inspect/fake313-stripped.so seeds/elf_inspect/fake313.so
    gcc -O2 -fPIC -shared -DHEX=0x030c01f0 -o seeds/elf_inspect/fake312.so seeds/fake_interpreter.c -lpthread
    gcc -O2 -static-pie -fPIC -nostartfiles -Wl,-e,PyEval_SaveThread \
        -o seeds/elf_inspect/fake313-static seeds/fake_interpreter.c -lpthread 2>/dev/null ||
        echo "static seed skipped (no static libc)"
fi
for t in elf_inspect disasm_finder proc_parsers config spool_file memory_walkers collector_answers; do
    cp seeds/$t/* "$corpus/$t/" 2>/dev/null || true
done

# Real interpreters: the small pyenv launchers, one libpython per line (large:
# libFuzzer mutates them slowly, but they carry real layouts), stripped copies.
elf="$corpus/elf_inspect"
n=0
for f in /root/.pyenv/versions/*/bin/python3.[0-9]* /usr/bin/python3.11 /usr/bin/python3*; do
    [[ -f "$f" && ! "$f" == *-config && ! "$f" == *.py ]] || continue
    cp -L "$f" "$elf/real-$(basename "$f")-$n" && n=$((n + 1))
done
for lib in /root/.pyenv/versions/3.8.*/lib/libpython3.8.so.1.0 /root/.pyenv/versions/3.13.*/lib/libpython3.13.so.1.0 \
    /var/cache/gilscope/debian-python/*/usr/bin/python3.14; do
    [[ -f "$lib" ]] || continue
    name=$(basename "$lib")
    strip --strip-all -o "$elf/stripped-$name" "$lib" 2>/dev/null || true
done

# The branch finder and version readers: code and data out of real files.
dis="$corpus/disasm_finder"
for f in "$elf"/fake313.so "$elf"/stripped-*; do
    [[ -f "$f" ]] || continue
    # 8 bytes of address, a flag byte, then 4 KiB of the file's .text.
    off=$(readelf -SW "$f" | awk '{for (i = 1; i < NF; i++) if ($i == ".text") {print "0x" $(i + 3); exit}}')
    [[ -n "$off" ]] || continue
    { printf '\x00\x10\x00\x00\x00\x00\x00\x00\x00'; dd if="$f" iflag=skip_bytes,count_bytes skip=$((off)) count=4096 status=none; } >"$dis/text-$(basename "$f")"
done

# /proc and cgroup files; the first byte picks the parser (see src/lib.rs).
proc="$corpus/proc_parsers"
put() { # put INDEX NAME: stdin becomes a seed for parser INDEX
    { printf "\\x$(printf %02x "$1")"; cat; } >"$proc/$2"
}
i=0
for pid in self 1 $(ls /proc | grep -E '^[0-9]+$' | head -20); do
    [[ -r /proc/$pid/stat ]] || continue
    i=$((i + 1))
    cat /proc/$pid/schedstat 2>/dev/null | put 0 "schedstat-$i" || true
    cat /proc/$pid/stat 2>/dev/null | put 3 "stat-$i" || true
    head -c 8192 /proc/$pid/environ 2>/dev/null | put 4 "environ-$i" || true
    cat /proc/$pid/cgroup 2>/dev/null | put 5 "cgroup-$i" || true
    cat /proc/$pid/status 2>/dev/null | put 6 "status-$i" || true
    head -c 16384 /proc/$pid/maps 2>/dev/null | put 8 "maps-$i" || true
    cat /proc/$pid/stat 2>/dev/null | put 9 "procfs-stat-$i" || true
    cat /proc/$pid/cmdline 2>/dev/null | put 10 "cmdline-$i" || true
done
{ cat /proc/self/cgroup; printf '\0'; cat /proc/self/mountinfo; } | put 2 cgroup-mountinfo
for f in /sys/fs/cgroup/cpu.stat /sys/fs/cgroup/cpu.max; do
    [[ -r $f ]] && put 1 "$(basename "$f")" <"$f"
done

# Config: the README's and the deploy manifests' YAML, each with an environment.
cfg="$corpus/config"
k=0
extract_yaml() { awk '/^```yaml/{on=1; next} /^```/{if(on){print "\x1e"}; on=0} on' "$1"; }
for md in ../README.md ../deploy/README.md; do
    [[ -f $md ]] || continue
    extract_yaml "$md" | awk -v dir="$cfg" -v base="$(basename "$md" .md)" 'BEGIN{RS="\x1e\n"} NF{f=dir"/"base"-"NR".yaml"; printf "%s", $0 > f; close(f)}'
done
for f in $(grep -rl 'gilscope.yaml\|config.yaml' ../deploy 2>/dev/null | head -5); do
    k=$((k + 1)); cp "$f" "$cfg/deploy-$k.yaml"
done
for f in "$cfg"/*.yaml; do
    printf '\0OTEL_METRIC_EXPORT_INTERVAL=15000\0OTEL_EXPORTER_OTLP_HEADERS=a=b%%20c,d=e\0OTEL_RESOURCE_ATTRIBUTES=k=v' >>"$f"
done

echo "corpora in $(pwd)/$corpus:"
for t in elf_inspect disasm_finder proc_parsers config spool_file memory_walkers collector_answers; do
    printf '  %-14s %4d files %8d KiB\n' "$t" "$(ls "$corpus/$t" | wc -l)" "$(du -sk "$corpus/$t" | cut -f1)"
done
