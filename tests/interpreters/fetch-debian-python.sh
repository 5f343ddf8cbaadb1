#!/usr/bin/env bash
# Fetches a CPython that Debian only ships as binary packages for a newer suite
# than this machine's (sid's python3.14 needs glibc 2.38; bookworm has 2.36), and
# makes it runnable here without installing anything: the .debs are unpacked
# with `dpkg -x` into a private prefix together with sid's libc6, and a launcher
# runs the interpreter through sid's own dynamic loader. Nothing is `dpkg -i`'d;
# the system's apt state is not touched (sid's index lives under the cache).
#
#   fetch-debian-python.sh [NAME...]               fetch NAME (default: all), skipping cached ones
#   fetch-debian-python.sh --print-path NAME       print NAME's launcher if fetched, else exit 1
#   fetch-debian-python.sh --print-debug-file NAME print the DWARF file of NAME's interpreter, else exit 1
#   fetch-debian-python.sh --list                  print the known names
#
# Names:
#   3.14   sid's python3.14 (static libpython, stripped, LTO; Debian's default build)
#   3.14t  free-threaded 3.14: only looked for. Debian ships no free-threaded
#          binary package (no python3.14-nogil, python3.14t, libpython3.14t…) in
#          sid or trixie, and its mirror here serves no python3.14 source to build
#          one (see build-cpython.sh); exit 3 says so, and names what was searched.
#
# Cache: $GILSCOPE_DEBIAN_PYTHON_CACHE (default /var/cache/gilscope/debian-python):
#   apt/            sid's package index (a private apt state; only for downloading)
#   debs/NAME/      the downloaded .debs (kept; re-downloaded when missing)
#   NAME/root/      the .debs unpacked (re-unpacked from debs/ when missing)
#   NAME/bin/pythonX.Y  the launcher: sid's ld.so --library-path … root/usr/bin/pythonX.Y "$@"
#   NAME/pythonX.Y.debug  the interpreter's DWARF, taken from sid's pythonX.Y-dbg by build id
#   NAME/.gilscope-fetched  written after verification; names the recipe and the packages
#
# Exit status: 0 all fetched (or cached); 3 some name has no package to fetch
# (the others were fetched); 1 any other failure. Needs network for the first
# run only, and root (or write access to the cache).
set -euo pipefail

# Bump when the recipe changes, so cached prefixes get rebuilt.
RECIPE_VERSION=1

cache="${GILSCOPE_DEBIAN_PYTHON_CACHE:-/var/cache/gilscope/debian-python}"
mirror="${GILSCOPE_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
suite=sid
all_names=(3.14 3.14t)

log() { echo "fetch-debian-python: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# name -> "X.Y packages..." (the interpreter, its stdlib, and the libraries its
# binary links that bookworm has too old: libc6 for GLIBC_2.38+, libexpat1, zlib1g).
recipe() {
  case "$1" in
    3.14) echo "3.14 python3.14-minimal libpython3.14-minimal libpython3.14-stdlib libc6 libexpat1 zlib1g" ;;
    *) return 1 ;;
  esac
}

known() { [[ " ${all_names[*]} " == *" $1 "* ]]; }

launcher() { echo "$cache/$1/bin/python$2"; }

is_fetched() {  # name X.Y; the cached prefix is complete and of this recipe
  local prefix="$cache/$1"
  [ -x "$(launcher "$1" "$2")" ] && [ -x "$prefix/root/usr/bin/python$2" ] \
    && [ -x "$prefix/root/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" ] \
    && [ -s "$prefix/python$2.debug" ] && [ -f "$prefix/.gilscope-fetched" ] \
    && grep -qx "recipe=$RECIPE_VERSION" "$prefix/.gilscope-fetched"
}

apt_log="$cache/apt/apt.log"
quietly() {  # command...: output to $apt_log; on failure its error lines are shown
  mkdir -p "$(dirname "$apt_log")"
  echo "=== $*" >>"$apt_log"
  local start rc=0
  start=$(($(wc -l <"$apt_log") + 1))
  "$@" >>"$apt_log" 2>&1 || rc=$?
  [ "$rc" -ne 0 ] || return 0
  tail -n +"$start" "$apt_log" | grep -E '^(E|W):' | head -n 4 | sed 's/^/    /' >&2
  return "$rc"
}

# apt options that point every piece of state at the cache: the system's
# sources, lists and archives stay bookworm's and untouched.
apt_opts=()
index_updated=""
ensure_index() {
  local dir="$cache/apt"
  apt_opts=(
    -o Dir::Etc::SourceList="$dir/$suite.list" -o Dir::Etc::SourceParts=-
    -o Dir::State::Lists="$dir/lists" -o Dir::Cache="$dir/cache"
    -o APT::Sandbox::User=root -q
  )
  [ -z "$index_updated" ] || return 0
  mkdir -p "$dir/lists/partial" "$dir/cache/archives/partial"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror $suite main" >"$dir/$suite.list"
  log "apt-get update ($suite's index, private to $dir)"
  quietly apt-get update "${apt_opts[@]}" || die "apt-get update of $suite failed (log: $apt_log)"
  index_updated=1
}

deb_of() {  # dir package -> the newest cached .deb of package, or nothing
  local f
  f="$(printf '%s\n' "$1/$2"_*.deb | sort -V | tail -n 1)"  # no match: the pattern itself, not -s
  [ -n "$f" ] && [ -s "$f" ] && echo "$f"
}

download() {  # dir package...: downloads what is not cached yet
  local dir="$1" p tmp
  shift
  local need=()
  for p in "$@"; do deb_of "$dir" "$p" >/dev/null || need+=("$p"); done
  ((${#need[@]})) || return 0
  ensure_index
  mkdir -p "$dir"
  tmp="$(mktemp -d "$dir/.download.XXXXXX")"
  log "downloading from $suite: ${need[*]}"
  if ! (cd "$tmp" && quietly apt-get download "${apt_opts[@]}" "${need[@]}"); then
    rm -rf "$tmp"
    die "apt-get download failed (log: $apt_log)"
  fi
  mv "$tmp"/*.deb "$dir"/ && rm -rf "$tmp"
}

build_id() {  # ELF file -> its GNU build id (hex), or nothing
  readelf -n "$1" 2>/dev/null | awk '/Build ID:/ {print $3; exit}'
}

# ---------------------------------------------------------------- 3.14t: look, say why not

look_for_free_threaded() {  # name X.Y; exit-3 style return when nothing exists
  local name="$1" ver="$2" found
  ensure_index
  # Any free-threaded flavour Debian could name: python3.14t, libpython3.14t…,
  # python3.14-nogil, …-freethreading, …-free-threaded.
  found="$(apt-cache "${apt_opts[@]}" pkgnames 2>/dev/null \
    | grep -E "^(lib)?python${ver//./\\.}(t\b|t-|-nogil|-free)" | sort || true)"
  if [ -n "$found" ]; then
    log "$name: $suite has $(tr '\n' ' ' <<<"$found")— this script has no recipe for them yet"
    return 1
  fi
  log "$name: SKIPPED: $suite ships no free-threaded binary package of $ver" \
      "(searched (lib)python${ver}t*, python${ver}-nogil*, python${ver}-free*), and the mirror serves" \
      "no python$ver source to build one"
  return 3
}

# ---------------------------------------------------------------- one interpreter

fetch_one() {
  local name="$1" ver pkgs
  read -r ver pkgs < <(recipe "$name")
  local prefix="$cache/$name" debs="$cache/debs/$name" py launch
  launch="$(launcher "$name" "$ver")"
  if is_fetched "$name" "$ver"; then
    log "$name: cached at $launch"
    return 0
  fi
  # shellcheck disable=SC2086 # the package list is meant to split
  download "$debs" $pkgs "python$ver-dbg"

  log "$name: unpacking into $prefix/root"
  rm -rf "$prefix"
  mkdir -p "$prefix/bin"
  local p deb
  for p in $pkgs; do
    deb="$(deb_of "$debs" "$p")" || die "$name: $p.deb vanished from $debs"
    dpkg-deb -x "$deb" "$prefix/root"
  done
  py="$prefix/root/usr/bin/python$ver"
  local loader="$prefix/root/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
  [ -x "$py" ] || die "$name: $py is not in the packages"
  [ -e "$loader" ] || die "$name: $loader is not in libc6"

  # The DWARF of this exact build: Debian's -dbg package carries it under
  # /usr/lib/debug/.build-id/ (next to its own debug interpreter); only that
  # one file is extracted.
  local id debug_member
  id="$(build_id "$py")"
  [ -n "$id" ] || die "$name: $py has no build id"
  debug_member="./usr/lib/debug/.build-id/${id:0:2}/${id:2}.debug"
  deb="$(deb_of "$debs" "python$ver-dbg")" || die "$name: python$ver-dbg.deb vanished from $debs"
  # dpkg-deb's status is not trusted (tar may stop reading early: SIGPIPE);
  # verify compares the extracted file's build id with the interpreter's.
  { dpkg-deb --fsys-tarfile "$deb" || true; } | tar -x -O "$debug_member" >"$prefix/python$ver.debug" \
    || die "$name: python$ver-dbg has no $debug_member (a different build than python$ver-minimal?)"

  # The launcher: sid's loader first on the command line, so the interpreter gets
  # sid's libc; libraries not in the prefix (libffi, libbz2…) come from the system.
  cat >"$launch" <<EOF
#!/bin/sh
# Runs Debian $suite's python$ver (needs its glibc) through $suite's own loader.
# Written by tests/interpreters/fetch-debian-python.sh; not a general-purpose
# python: sys.executable is the bare binary, which does not start without this.
root='$prefix/root'
exec "\$root/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" \\
  --library-path "\$root/usr/lib/x86_64-linux-gnu\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" \\
  "\$root/usr/bin/python$ver" "\$@"
EOF
  chmod +x "$launch"

  verify "$name" "$ver" "$launch" "$py" "$prefix/python$ver.debug" \
    || die "$name: FAILED at step 'verify' (the prefix stays for inspection: $prefix)"

  {
    echo "recipe=$RECIPE_VERSION"
    echo "suite=$suite"
    for deb in "$debs"/*.deb; do echo "deb=$(basename "$deb")"; done
    echo "build_id=$id"
    echo "fetched=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  } >"$prefix/.gilscope-fetched"
  log "$name: ready: $launch"
}

verify() {  # name X.Y launcher interpreter debug-file
  local name="$1" ver="$2" launch="$3" py="$4" debug="$5" out
  local env_clean=(env -u PYTHONHOME -u PYTHONPATH -u PYTHON_GIL)
  out="$("${env_clean[@]}" "$launch" -c \
    'import sys, threading, hashlib, os, time; print(sys.version.split()[0], sys._is_gil_enabled())')" \
    || { log "$name: $launch does not run"; return 1; }
  log "$name: runs: Python $out"
  [[ "$out" == "$ver".*" True" ]] || { log "$name: expected Python $ver with the GIL on"; return 1; }
  readelf -W --dyn-syms "$py" | awk '$8 == "_PyRuntime" && $7 != "UND" {found=1} END {exit !found}' \
    || { log "$name: $py does not export _PyRuntime"; return 1; }
  [ "$(build_id "$debug")" = "$(build_id "$py")" ] \
    || { log "$name: $debug is not the DWARF of $py (build ids differ)"; return 1; }
  # (Captured, not piped into grep -q: under pipefail an early grep exit fails readelf.)
  [[ "$(readelf -S -W "$debug" 2>/dev/null)" == *.debug_info* ]] \
    || { log "$name: $debug has no .debug_info"; return 1; }
}

# ---------------------------------------------------------------- CLI

print_of() {  # what name
  [ $# -eq 2 ] || die "usage: $0 --print-path|--print-debug-file NAME"
  local ver
  known "$2" || die "unknown interpreter name '$2' (known: ${all_names[*]})"
  read -r ver _ < <(recipe "$2") || exit 1  # nothing to fetch for it
  is_fetched "$2" "$ver" || exit 1
  case "$1" in
    path) launcher "$2" "$ver" ;;
    debug) echo "$cache/$2/python$ver.debug" ;;
  esac
}

case "${1:-}" in
  -h|--help)
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
    exit 0 ;;
  --list) printf '%s\n' "${all_names[@]}"; exit 0 ;;
  --print-path) shift; print_of path "$@"; exit 0 ;;
  --print-debug-file) shift; print_of debug "$@"; exit 0 ;;
  -*) die "unknown option $1 (see --help)" ;;
esac

names=("$@")
((${#names[@]})) || names=("${all_names[@]}")
for n in "${names[@]}"; do
  known "$n" || die "unknown interpreter name '$n' (known: ${all_names[*]})"
done
for tool in apt-get apt-cache dpkg-deb readelf tar flock; do
  command -v "$tool" >/dev/null || die "$tool not found (binutils for readelf; apt/dpkg are Debian's)"
done

mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9 || die "cannot lock $cache/.lock"

unavailable=()
for n in "${names[@]}"; do
  if recipe "$n" >/dev/null; then
    fetch_one "$n"
  else
    rc=0
    look_for_free_threaded "$n" "${n%t}" || rc=$?
    [ "$rc" -eq 3 ] || die "$n: looking for a free-threaded package failed"
    unavailable+=("$n")
  fi
done
if ((${#unavailable[@]})); then
  log "not available as Debian packages: ${unavailable[*]} (exit 3)"
  exit 3
fi
