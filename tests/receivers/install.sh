#!/usr/bin/env bash
# Installs the real OTLP receivers the `gilscope run` end-to-end tests export to,
# cached under /var/cache/gilscope/receivers (idempotent: seconds when cached):
#   bin/rotel            an OTLP collector in Rust (pip package `rotel`, in its own venv)
#   bin/victoria-metrics VictoriaMetrics from Debian sid's .deb (OTLP ingestion + PromQL)
#   bin/vmalert          from the same .deb: evaluates dashboards/alerts.yaml against it
#   bin/vmalert-tool     from the same .deb: `vmalert-tool unittest` of the alert rules
# The system's apt state is not touched: sid is used only for this one download.
set -euo pipefail

cache="${GILSCOPE_RECEIVERS:-/var/cache/gilscope/receivers}"
mkdir -p "$cache/bin"

if [ ! -x "$cache/bin/rotel" ]; then
  echo "receivers: installing rotel (pip) into $cache/venv" >&2
  python3 -m venv "$cache/venv"
  "$cache/venv/bin/pip" install -q rotel
  # The wheel ships the collector binary as rotel/rotel-agent (no console script).
  found=$(find "$cache/venv" -type f -name rotel-agent | head -1 || true)
  [ -n "$found" ] || { echo "receivers: no rotel-agent binary in the rotel wheel" >&2; exit 1; }
  chmod +x "$found"
  ln -sf "$found" "$cache/bin/rotel"
fi

vm_tools=(victoria-metrics vmalert vmalert-tool)
have_all=1
for tool in "${vm_tools[@]}"; do [ -x "$cache/bin/$tool" ] || have_all=0; done

if [ "$have_all" = 0 ] && ! ls "$cache"/apt/victoria-metrics_*.deb >/dev/null 2>&1; then
  echo "receivers: downloading victoria-metrics from Debian sid into $cache" >&2
  apt_dir="$cache/apt"
  mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial"
  list="$apt_dir/sid.list"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian sid main" > "$list"
  opts=(-o "Dir::Etc::SourceList=$list" -o "Dir::Etc::SourceParts=-"
        -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache")
  apt-get "${opts[@]}" update -q >&2
  chmod 777 "$apt_dir"  # apt-get download drops to _apt
  (cd "$apt_dir" && apt-get "${opts[@]}" download victoria-metrics >&2)
fi

if [ "$have_all" = 0 ]; then
  # The .deb is cached: unpack it unless every tool is already unpacked (running
  # receivers use those files), then link every tool this script provides.
  apt_dir="$cache/apt"
  deb=$(ls "$apt_dir"/victoria-metrics_*.deb | head -1)
  unpacked=1
  for tool in "${vm_tools[@]}"; do [ -x "$apt_dir/root/usr/bin/$tool" ] || unpacked=0; done
  if [ "$unpacked" = 0 ]; then
    rm -rf "$apt_dir/root" && mkdir -p "$apt_dir/root"
    dpkg -x "$deb" "$apt_dir/root"
  fi
  for tool in "${vm_tools[@]}"; do
    bin=$(find "$apt_dir/root" -type f -path "*bin/$tool" | head -1)
    [ -n "$bin" ] || { echo "receivers: no $tool binary in $deb" >&2; exit 1; }
    ln -sf "$bin" "$cache/bin/$tool"
  done
fi

"$cache/bin/rotel" --version >/dev/null 2>&1 || "$cache/bin/rotel" --help >/dev/null
"$cache/bin/victoria-metrics" -version >&2
"$cache/bin/vmalert" -version >&2
"$cache/bin/vmalert-tool" --help >/dev/null
