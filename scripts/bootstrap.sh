#!/usr/bin/env bash
# Create the project's virtualenv and install rabbittask with its test, bench, redis and dashboard extras.
# On a fresh Debian machine this installs python3-venv with apt first when it is missing.
set -euo pipefail
venv=${1:-.venv}
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
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q -e '.[test,bench,redis,dashboard]'
# The result-backend tests start a throwaway redis-server when no Redis answers on 127.0.0.1:6379.
if ! command -v redis-server >/dev/null && [ ! -x /usr/bin/redis-server ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing redis-server with apt-get (for the result-backend tests)"
    DEBIAN_FRONTEND=noninteractive apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends redis-server
  else
    echo "note: redis-server is not installed; the result-backend tests need it (apt-get install redis-server)" >&2
  fi
fi
# The partition scenarios and `make scaling` put broker nodes and workers in network namespaces (`ip netns`).
if ! command -v ip >/dev/null && [ ! -x /usr/sbin/ip ] && [ ! -x /sbin/ip ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing iproute2 with apt-get (for the network-namespace scenarios)"
    DEBIAN_FRONTEND=noninteractive apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends iproute2
  else
    echo "note: iproute2 is not installed; the partition scenarios need it (apt-get install iproute2)" >&2
  fi
fi
# The dashboard tests drive Debian's chromium with Playwright (Playwright's own browser download is not used).
if ! command -v chromium >/dev/null && [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing chromium with apt-get (for the dashboard tests)"
    DEBIAN_FRONTEND=noninteractive apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium
  else
    echo "note: chromium is not installed; the dashboard browser test needs it (apt-get install chromium)" >&2
  fi
fi
# The CPU-starvation fault scenario loads both cores with stress-ng.
if ! command -v stress-ng >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing stress-ng with apt-get (for the fault scenarios)"
    DEBIAN_FRONTEND=noninteractive apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends stress-ng
  else
    echo "note: stress-ng is not installed; one fault scenario needs it (apt-get install stress-ng)" >&2
  fi
fi
echo "virtualenv ready: $venv"
