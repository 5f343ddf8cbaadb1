#!/usr/bin/env bash
# Installs the real Python applications and libraries the end-to-end tests run
# under gilscope, from PyPI, into a venv of pyenv's CPython 3.11 cached under
# /var/cache/gilscope/apps (idempotent: seconds when cached):
#   venv/   uvloop (libuv's event loop for asyncio), FastAPI and uvicorn (a real
#           web app, tests/apps/fastapi_app.py): tests/e2e/check/event_loops.rs
# Pinned versions, so a test's truth does not move under it. The venv's python
# is pyenv's own interpreter (a symlink), so gilscope measures the same build.
set -euo pipefail

cache="${GILSCOPE_APPS:-/var/cache/gilscope/apps}"
packages=("uvloop==0.21.0" "fastapi==0.115.6" "uvicorn==0.34.0")

pyenv_root="${PYENV_ROOT:-/root/.pyenv}"
python=$(ls -d "$pyenv_root"/versions/3.11.*/bin/python3.11 2>/dev/null | sort -V | tail -1 || true)
[ -n "$python" ] || { echo "apps: no pyenv CPython 3.11 under $pyenv_root/versions" >&2; exit 1; }

venv="$cache/venv"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import uvloop, fastapi, uvicorn" 2>/dev/null; then
  echo "apps: installing ${packages[*]} into $venv (from $python)" >&2
  mkdir -p "$cache"
  "$python" -m venv --clear "$venv"
  "$venv/bin/python" -m pip install -q "${packages[@]}"
fi
"$venv/bin/python" -c "import uvloop, fastapi, uvicorn
print('apps: uvloop', uvloop.__version__, 'fastapi', fastapi.__version__, 'uvicorn', uvicorn.__version__)" >&2
