#!/usr/bin/env bash
# Builds extra CPython interpreters (plain upstream sources, taken from Debian's
# source packages) and caches them, so tests can run against them.
#
#   build-cpython.sh [NAME...]          build NAME (default: all), skipping cached ones
#   build-cpython.sh --print-path NAME  print NAME's interpreter path if built, else exit 1
#   build-cpython.sh --list             print the known names
#
# Names:
#   3.14   CPython 3.14 from Debian sid's python3.14,    --enable-shared
#   3.13t  CPython 3.13 from Debian trixie's python3.13, --disable-gil --enable-shared
#   3.14t  CPython 3.14 from Debian sid's python3.14,    --disable-gil --enable-shared
#   3.13-musl  CPython 3.13 from Debian trixie's python3.13, built with musl-gcc
#          (Debian's musl-tools) against musl's libc.so, --disable-shared, no
#          pkg-config (so no OpenSSL/zlib/ffi/...): threading, time, os work,
#          which is what the musl tests need. Like Alpine's python, its GIL waits
#          cannot be seen from futex addresses (see README "How it measures").
#          Also bin/python3.13-static: the same objects linked -static (musl's
#          libc inside, symbols only in .symtab), for the static-musl path.
#
# Each one is installed into its own prefix, $GILSCOPE_CPYTHON_CACHE/NAME
# (default /var/cache/gilscope/cpython/NAME), with an rpath to its own libpython,
# no PGO/LTO, default -g (DWARF kept, nothing stripped), no pip, no test modules.
# The upstream tarball (python3.X_*.orig.tar.xz) is fetched once with `apt-get
# source -d` through a deb-src-only list for trixie and sid
# (/etc/apt/sources.list.d/gilscope-src.list) and kept in $cache/src; binary
# packages keep coming from bookworm only. Build dependencies come from bookworm.
#
# Exit status: 0 all built (or cached); 3 the others were built but the source
# of some could not be downloaded (the mirror does not serve it); 1 any other failure.
#
# A build counts as done only when $prefix/.gilscope-built exists, written after
# the verification passes and naming the recipe; otherwise the prefix is wiped
# and rebuilt. Build logs: $cache/logs/NAME.log. Needs root (or sudo) for apt.
set -euo pipefail

# Bump when the configure recipe changes, so cached builds get rebuilt.
RECIPE_VERSION=1

cache="${GILSCOPE_CPYTHON_CACHE:-/var/cache/gilscope/cpython}"
src_list=/etc/apt/sources.list.d/gilscope-src.list
mirror="${GILSCOPE_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
jobs="${GILSCOPE_CPYTHON_JOBS:-$(nproc 2>/dev/null || echo 2)}"
all_names=(3.14 3.13t 3.14t 3.13-musl)

build_deps=(
  build-essential pkg-config xz-utils binutils
  libssl-dev zlib1g-dev libffi-dev libbz2-dev liblzma-dev libsqlite3-dev
  libreadline-dev libncurses-dev libgdbm-dev libgdbm-compat-dev uuid-dev libzstd-dev
)

# Modules whose import is checked after each build.
check_modules="hashlib, _hashlib, threading, ssl, zlib, ctypes, bz2, lzma, sqlite3, decimal"

log() { echo "build-cpython: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

apt_log="$cache/logs/apt.log"
quietly() {  # command...: output goes to $apt_log; on failure its error lines are shown
  mkdir -p "$(dirname "$apt_log")"
  echo "=== $*" >>"$apt_log"
  local start
  start=$(($(wc -l <"$apt_log") + 1))
  local rc=0
  "$@" >>"$apt_log" 2>&1 || rc=$?
  [ "$rc" -ne 0 ] || return 0
  tail -n +"$start" "$apt_log" | grep -E '^E:' | grep -v 'some archives' | head -n 4 | sed 's/^/    /' >&2
  return "$rc"
}

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

# name -> "source package" "suite" "X.Y" "configure flags"
recipe() {
  case "$1" in
    3.14)  echo "python3.14 sid 3.14 " ;;
    3.13t) echo "python3.13 trixie 3.13 --disable-gil" ;;
    3.14t) echo "python3.14 sid 3.14 --disable-gil" ;;
    3.13-musl) echo "python3.13 trixie 3.13 " ;;
    *) return 1 ;;
  esac
}

interp_path() {  # name -> path of the interpreter in its prefix
  local pkg suite ver flags suffix=""
  read -r pkg suite ver flags < <(recipe "$1")
  [[ "$1" == *t ]] && suffix=t
  echo "$cache/$1/bin/python$ver$suffix"
}

is_built() {  # name [recipe-line]; the cached build is complete (and of this recipe)
  local py marker="$cache/$1/.gilscope-built"
  py="$(interp_path "$1")"
  [ -x "$py" ] && [ -f "$marker" ] || return 1
  [ -z "${2:-}" ] || grep -qxF "$2" "$marker"
}

# ---------------------------------------------------------------- steps

install_build_deps() {
  local missing=() p
  for p in "${build_deps[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  log "installing build dependencies from bookworm: ${missing[*]}"
  quietly $sudo apt-get update -q || return 1
  quietly $sudo env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -q --no-install-recommends "${missing[@]}"
}

apt_src_updated=""
ensure_src_index() {
  [ -n "$apt_src_updated" ] && return 0
  local want
  want="$(printf '%s\n' \
    "# gilscope: source packages only (tests/interpreters/build-cpython.sh)." \
    "# deb-src lines only: installed binary packages stay bookworm's." \
    "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror trixie main" \
    "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror sid main")"
  if [ "$(cat "$src_list" 2>/dev/null)" != "$want" ]; then
    log "writing $src_list (deb-src for trixie and sid)"
    printf '%s\n' "$want" | $sudo tee "$src_list" >/dev/null
  fi
  log "apt-get update (only $src_list)"
  # Update just this list; keep the other lists as they are.
  quietly $sudo apt-get update -q \
    -o Dir::Etc::SourceList="$src_list" -o Dir::Etc::SourceParts=- \
    -o APT::Get::List-Cleanup=0 || die "apt-get update of $src_list failed (log: $apt_log)"
  apt_src_updated=1
}

orig_tarball() {  # pkg -> newest cached orig tarball, or nothing
  local f
  f="$(ls -1 "$cache/src/$1/$1"_*.orig.tar.xz 2>/dev/null | sort -V | tail -n 1)" || true
  [ -n "$f" ] && [ -s "$f" ] && echo "$f"
}

tarball=""
fetch_source() {  # pkg suite; sets $tarball. Returns 3 if the suite's source can't be downloaded.
  local pkg="$1" suite="$2" dir="$cache/src/$1" versions v tmp
  if tarball="$(orig_tarball "$pkg")"; then return 0; fi  # downloaded before
  ensure_src_index
  mkdir -p "$dir"
  # Every version of pkg that the suite's Sources index lists, newest first.
  versions="$(apt-cache madison "$pkg" 2>/dev/null \
    | awk -F'|' -v s=" $suite/" 'index($3, s) && $3 ~ /Sources/ {gsub(/ /, "", $2); print $2}' \
    | sort -rVu)"
  [ -n "$versions" ] || { log "$pkg: no source package in $suite's index"; return 3; }
  for v in $versions; do
    log "downloading source package $pkg $v ($suite) into $dir"
    tmp="$(mktemp -d "$dir/.download.XXXXXX")"
    # -d: download only (.dsc, orig tarball, debian tarball); nothing is unpacked or built.
    if (cd "$tmp" && quietly apt-get source -d -q -o APT::Sandbox::User=root "$pkg=$v"); then
      mv "$tmp"/* "$dir"/ && rm -rf "$tmp"
      tarball="$(orig_tarball "$pkg")" || { log "$pkg $v: no orig tarball in the source package"; return 3; }
      log "downloaded: $(cd "$dir" && du -ch -- * | tr '\n' ' ')"
      return 0
    fi
    rm -rf "$tmp"
    log "$pkg $v: the mirror does not serve it"
  done
  return 3
}

# ---------------------------------------------------------------- one build

build_dir=""
cleanup() { [ -z "$build_dir" ] || rm -rf "$build_dir"; }
trap cleanup EXIT

build_one() {
  local name="$1" pkg suite ver flags
  read -r pkg suite ver flags < <(recipe "$name") || die "unknown interpreter name '$name' (known: ${all_names[*]})"
  local prefix="$cache/$name" py logf="$cache/logs/$name.log"
  py="$(interp_path "$name")"

  local configure_args=(--prefix="$prefix" --enable-shared $flags
                        --without-ensurepip --disable-test-modules)
  local configure_env=(LDFLAGS="-Wl,-rpath,$prefix/lib")
  local musl=""
  if [[ "$name" == *-musl ]]; then
    musl=1
    # musl-gcc answers --print-multiarch with glibc's triplet, which configure
    # rejects next to the musl triplet: a wrapper answers with nothing. No
    # pkg-config, so no glibc-built library (zlib, OpenSSL, ...) is picked up.
    configure_args=(--prefix="$prefix" --disable-shared $flags
                    --without-ensurepip --disable-test-modules)
    configure_env=(CC="$cache/tools/musl-cc" PKG_CONFIG=/bin/false)
  fi
  local recipe_line="recipe=$RECIPE_VERSION configure=${configure_args[*]}${musl:+ CC=musl-gcc +static}"

  if is_built "$name" "$recipe_line"; then
    log "$name: cached at $py"
    return 0
  fi

  [ -n "$deps_checked" ] || { install_build_deps || die "installing build dependencies failed"; deps_checked=1; }
  [ -z "$musl" ] || install_musl || die "installing musl-tools failed"
  local rc=0
  fetch_source "$pkg" "$suite" || rc=$?
  if [ "$rc" -eq 3 ]; then
    log "$name: SKIPPED: no downloadable source for $pkg in $suite"
    unavailable+=("$name")
    return 0
  fi
  [ "$rc" -eq 0 ] || die "$name: FAILED at step 'download source'"
  local debver  # the Debian version the orig tarball came with, from its .dsc
  debver="$(ls -1 "$(dirname "$tarball")/${pkg}"_*.dsc 2>/dev/null | sort -V | tail -n 1)" || true
  debver="$(basename "$debver" .dsc)"; debver="${debver#"${pkg}_"}"

  local t0=$SECONDS
  log "$name: building from $(basename "$tarball") (${configure_args[*]}); log: $logf"
  rm -rf "$prefix"
  mkdir -p "$cache/logs"
  : >"$logf"
  build_dir="$(mktemp -d "${TMPDIR:-/tmp}/gilscope-cpython-$name.XXXXXX")"

  run_step() {  # step-name command...  (output to the log; on failure, show its tail)
    local step="$1"; shift
    log "$name: $step"
    echo "=== $step: $*" >>"$logf"
    if ! "$@" >>"$logf" 2>&1; then
      tail -n 40 "$logf" | sed 's/^/    /' >&2
      log "$name: FAILED at step '$step' (full log: $logf)"
      rm -rf "$build_dir"; build_dir=""
      exit 1
    fi
  }

  run_step "unpack" tar -xJf "$tarball" -C "$build_dir" --strip-components=1
  [ -x "$build_dir/configure" ] || die "$name: $tarball has no configure at its top"
  cd "$build_dir"
  run_step "configure" ./configure "${configure_args[@]}" "${configure_env[@]}"
  run_step "make -j$jobs" make -j"$jobs"
  # Missing optional modules are listed at the end of make's output.
  local missing
  missing="$(sed -n '/necessary bits to build these optional modules were not found/,/^$/p;
                     /Failed to build these modules/,/^$/p;
                     /built successfully but were removed/,/^$/p' "$logf" | grep -v '^$' || true)"
  [ -z "$missing" ] || log "$name: module summary from make:"$'\n'"$(sed 's/^/    /' <<<"$missing")"
  run_step "make altinstall" make altinstall
  if [ -n "$musl" ]; then
    run_step "link python$ver-static" "$cache/tools/musl-cc" -static -o "$prefix/bin/python$ver-static" \
      Programs/python.o "libpython$ver.a" -ldl -lm
  fi
  cd /
  rm -rf "$build_dir"; build_dir=""

  if [ -n "$musl" ]; then
    verify_musl "$name" "$py" "$ver" || { log "$name: FAILED at step 'verify'"; exit 1; }
  else
    verify "$name" "$py" "$ver" "$flags" || { log "$name: FAILED at step 'verify'"; exit 1; }
  fi

  printf '%s\n' "$recipe_line" "source=$pkg $debver ($suite, $(basename "$tarball"))" \
    "built=$(date -u +%Y-%m-%dT%H:%M:%SZ)" "seconds=$((SECONDS - t0))" >"$prefix/.gilscope-built"
  log "$name: done in $((SECONDS - t0))s: $py"
}

verify() {  # name python X.Y flags
  local name="$1" py="$2" ver="$3" flags="$4" out want lib
  local env_clean=(env -u PYTHONHOME -u PYTHONPATH -u PYTHON_GIL -u LD_LIBRARY_PATH)
  log "$name: verify"
  out="$("${env_clean[@]}" "$py" -c 'import sys; print(sys.version)')" \
    || { log "$name: $py does not run"; return 1; }
  log "$name: sys.version = $(tr '\n' ' ' <<<"$out")"
  [[ "$out" == "$ver".* ]] || { log "$name: expected Python $ver"; return 1; }

  out="$("${env_clean[@]}" "$py" -c 'import sys; print(sys._is_gil_enabled())')" \
    || { log "$name: sys._is_gil_enabled() failed"; return 1; }
  want=True; [[ "$flags" == *--disable-gil* ]] && want=False
  [ "$out" = "$want" ] || { log "$name: sys._is_gil_enabled() is $out, want $want"; return 1; }

  "${env_clean[@]}" "$py" -c "import $check_modules" >&2 \
    || { log "$name: import $check_modules failed"; return 1; }

  # The interpreter must use its own libpython (rpath), and export _PyRuntime.
  lib="$(ldd "$py" | awk '/libpython/ {print $3}')"
  [[ "$lib" == "$cache/$name/lib/"* ]] || { log "$name: $py links '$lib', not its own libpython"; return 1; }
  readelf -W --dyn-syms "$lib" | awk '$8 == "_PyRuntime" && $7 != "UND" {found=1} END {exit !found}' \
    || { log "$name: $lib does not export _PyRuntime"; return 1; }
  # And keeps its DWARF.
  readelf -S -W "$lib" | grep -q '\.debug_info' || { log "$name: $lib has no .debug_info"; return 1; }
}

install_musl() {  # musl-gcc (bookworm's musl-tools) and the wrapper configure needs
  if ! command -v musl-gcc >/dev/null; then
    log "installing musl-tools from bookworm"
    quietly $sudo apt-get update -q || return 1
    quietly $sudo env DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -q --no-install-recommends musl-tools || return 1
  fi
  mkdir -p "$cache/tools"
  printf '%s\n' '#!/bin/sh' \
    '# musl-gcc, except that --print-multiarch answers nothing (configure then uses the triplet).' \
    '[ "$1" = --print-multiarch ] && exit 0' \
    'exec musl-gcc "$@"' >"$cache/tools/musl-cc"
  chmod +x "$cache/tools/musl-cc"
}

verify_musl() {  # name python X.Y: runs, links musl, keeps the symbols gilscope reads
  local name="$1" py="$2" ver="$3" out
  log "$name: verify"
  out="$(env -u PYTHONHOME -u PYTHONPATH "$py" -c 'import sys, threading, time, os; print(sys.version)')" \
    || { log "$name: $py does not run (or cannot import threading/time/os)"; return 1; }
  log "$name: sys.version = $(tr '\n' ' ' <<<"$out")"
  [[ "$out" == "$ver".* ]] || { log "$name: expected Python $ver"; return 1; }
  readelf -l -W "$py" | grep -q 'interpreter: /lib/ld-musl-' \
    || { log "$name: $py is not linked against musl (no ld-musl program interpreter)"; return 1; }
  readelf -W --dyn-syms "$py" | awk '$8 == "_PyRuntime" && $7 != "UND" {found=1} END {exit !found}' \
    || { log "$name: $py does not export _PyRuntime"; return 1; }
  readelf -S -W "$py" | grep -q '\.debug_info' || { log "$name: $py has no .debug_info"; return 1; }
  out="$(env -u PYTHONHOME -u PYTHONPATH "$py-static" -c 'import threading, time, os; print("ok")')" \
    || { log "$name: $py-static does not run"; return 1; }
  readelf -W -s "$py-static" | awk '$8 == "__pthread_cond_timedwait" && $7 != "UND" {found=1} END {exit !found}' \
    || { log "$name: $py-static has no __pthread_cond_timedwait in .symtab"; return 1; }
  readelf -W --dyn-syms /lib/ld-musl-x86_64.so.1 | awk '$8 == "pthread_cond_timedwait" && $7 != "UND" {found=1} END {exit !found}' \
    || { log "$name: musl's libc does not export pthread_cond_timedwait"; return 1; }
}

# ---------------------------------------------------------------- CLI

case "${1:-}" in
  -h|--help)
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
    exit 0 ;;
  --list)
    printf '%s\n' "${all_names[@]}"
    exit 0 ;;
  --print-path)
    [ $# -eq 2 ] || die "usage: $0 --print-path NAME"
    recipe "$2" >/dev/null || die "unknown interpreter name '$2' (known: ${all_names[*]})"
    is_built "$2" || exit 1
    interp_path "$2"
    exit 0 ;;
  -*)
    die "unknown option $1 (see --help)" ;;
esac

names=("$@")
((${#names[@]})) || names=("${all_names[@]}")
for n in "${names[@]}"; do
  recipe "$n" >/dev/null || die "unknown interpreter name '$n' (known: ${all_names[*]})"
done

mkdir -p "$cache"
# One run at a time per cache directory.
exec 9>"$cache/.lock"
flock 9 || die "cannot lock $cache/.lock"

deps_checked=""
unavailable=()
for n in "${names[@]}"; do
  build_one "$n"
done
if ((${#unavailable[@]})); then
  log "not built, their sources could not be downloaded: ${unavailable[*]} (exit 3)"
  exit 3
fi
