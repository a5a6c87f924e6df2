#!/usr/bin/env bash
# Create a virtualenv and install rabbittask in it: `bootstrap.sh VENV [EXTRAS]`.
#
# EXTRAS defaults to what `make test` needs (test, bench, redis, dashboard, docs), with the system tools
# of the test suite; `make demo` passes an empty EXTRAS: the package alone, no test tooling, no apt.
# On a fresh Debian machine this installs python3-venv with apt first when it is missing.
set -euo pipefail
venv=${1:-.venv}
extras=${2-test,bench,redis,dashboard,docs,uvloop}
py=${PYTHON:-python3}

if ! command -v "$py" >/dev/null; then
  echo "python3 is missing: install it (apt-get install python3 python3-venv) and run make again" >&2
  exit 1
fi
if ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "rabbittask needs Python 3.11 or newer; found $("$py" --version)" >&2
  exit 1
fi
if ! "$py" -m venv --help >/dev/null 2>&1 || ! "$py" -c 'import ensurepip' 2>/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing python3-venv with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv
  else
    echo "python3 cannot create virtualenvs: run 'sudo apt-get install python3-venv' and make again" >&2
    exit 1
  fi
fi
[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
if [ -z "$extras" ]; then
  # The package alone (the demo): no pip upgrade, no extras, no system tools; a fresh machine takes ~20 s.
  "$venv/bin/python" -m pip install -q -e .
  echo "virtualenv ready: $venv (rabbittask without extras)"
  exit 0
fi
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q -e ".[$extras]"
# need_tool COMMAND PACKAGE WHY: install PACKAGE with apt-get (as root) when COMMAND is missing, else say so.
need_tool() {
  local cmd=$1 pkg=$2 why=$3
  if command -v "$cmd" >/dev/null || [ -x "/usr/bin/$cmd" ] || [ -x "/usr/sbin/$cmd" ] || [ -x "/sbin/$cmd" ]; then
    return
  fi
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing $pkg with apt-get ($why)"
    DEBIAN_FRONTEND=noninteractive apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$pkg"
  else
    echo "note: $pkg is not installed; $why need it (apt-get install $pkg)" >&2
  fi
}
# The result-backend tests start a throwaway redis-server when no Redis answers on 127.0.0.1:6379.
need_tool redis-server redis-server "the result-backend tests"
# The partition scenarios and `make scaling` put broker nodes and workers in network namespaces (`ip netns`).
need_tool ip iproute2 "the network-namespace scenarios"
# The dashboard tests drive Debian's chromium with Playwright (Playwright's own browser download is not used).
need_tool chromium chromium "the dashboard browser tests"
# The CPU-starvation fault scenario loads both cores with stress-ng.
need_tool stress-ng stress-ng "the CPU-starvation fault scenarios"
echo "virtualenv ready: $venv"
