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
  util-linux      # setpriv/nsenter (Essential, listed to be explicit)
  libcap2-bin     # capsh: the capability test runs gilscope as nobody with only the DaemonSet's capabilities
  python3-venv    # the Kubernetes tools below live in their own venv
  openssl         # the TLS tests make a throwaway CA and certificates
  socat           # the gRPC-over-TLS test puts a real TLS terminator in front of rotel
  wrk             # the load generator of the web-framework test (FastAPI under uvicorn)
  runc            # the DaemonSet's pod spec runs in a real OCI container (crun fails on hybrid cgroups)
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

# Kubernetes tools for agent/tests/deploy_manifests.rs, in their own venv under
# /var/cache/gilscope/k8s-tools (idempotent): kubernetes-validate checks deploy/manifests
# and the rendered chart against the API schemas; helm-python-sdk is Helm's own Go SDK
# (chart loader, template engine, linter) behind a C ABI, used by deploy/helm/render.py
# because no registry reachable here ships a helm binary for Linux.
k8s_tools="${GILSCOPE_K8S_TOOLS:-/var/cache/gilscope/k8s-tools}"
if [ ! -x "$k8s_tools/venv/bin/kubernetes-validate" ] || ! "$k8s_tools/venv/bin/python" -c "import helm_python" 2>/dev/null; then
  echo "setup: installing kubernetes-validate and helm-python-sdk into $k8s_tools/venv" >&2
  mkdir -p "$k8s_tools"
  /usr/bin/python3 -m venv --clear "$k8s_tools/venv"
  "$k8s_tools/venv/bin/python" -m pip install -q "kubernetes-validate==1.37.0" "helm-python-sdk==0.2.2"
fi
