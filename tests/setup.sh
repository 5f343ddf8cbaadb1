#!/usr/bin/env bash
# Installs what gilscope needs to build and test on a fresh Debian bookworm machine.
# Idempotent: installs only what is missing. Needs root (or sudo).
set -euo pipefail

packages=(
  clang-19        # compiles ebpf/*.bpf.c (agent/build.rs)
  libbpf-dev      # bpf_helpers.h and friends
  linux-libc-dev  # linux/bpf.h, linux/futex.h
  bpftool         # the layout test reads the BTF of the compiled objects
  binutils        # objcopy: the stripped-interpreter test
  python3.11      # Debian's stripped, static, LTO-built interpreter (a test target)
  make
  gdb             # the offset-table test reads the DWARF of the pyenv builds
  tmux            # the `gilscope top` test drives it in a real terminal
  openssl         # the TLS tests make a throwaway CA and certificates
  socat           # the gRPC-over-TLS test puts a real TLS terminator in front of rotel
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if ((${#missing[@]})); then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "setup: installing ${missing[*]}" >&2
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

command -v cargo >/dev/null || { echo "setup: cargo not found; install Rust (rustup) first" >&2; exit 1; }
