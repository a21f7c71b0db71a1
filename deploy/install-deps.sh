#!/usr/bin/env bash
# Installs what lvs-ha's tests, demo and benchmarks need on a Debian machine (run as root).
# Idempotent: a second run with everything present installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

debs=()
have() { command -v "$1" >/dev/null 2>&1; }
have ip        || debs+=(iproute2)
have nft       || debs+=(nftables)
have ipvsadm   || debs+=(ipvsadm)
have keepalived || debs+=(keepalived)
have tcpdump   || debs+=(tcpdump)
have conntrackd || debs+=(conntrackd)
have conntrack || debs+=(conntrack)
have modprobe  || debs+=(kmod)
have ping      || debs+=(iputils-ping)
have make      || debs+=(make)
have ps        || debs+=(procps)
have mount     || debs+=(mount)
have lintian   || debs+=(lintian)
# make deb (tests/integration/test_deb.py) compiles PyYAML against Debian's libyaml
have gcc       || debs+=(gcc)
dpkg -s libyaml-dev >/dev/null 2>&1 || debs+=(libyaml-dev)
dpkg -s python3-dev >/dev/null 2>&1 || debs+=(python3-dev)
have dpkg-deb  || debs+=(dpkg-dev)
have groff     || debs+=(groff-base)  # the man pages are checked with groff -ww
have man       || debs+=(man-db)
have systemd-analyze || debs+=(systemd)
have chromium  || debs+=(chromium)
have promtool  || debs+=(prometheus)  # promtool checks deploy/monitoring/alerts.yml
have bird      || debs+=(bird2)       # announce: lvs-ha runs its own BIRD 2 (the tests too, on routers and directors)
if ((${#debs[@]})); then
  if [[ $EUID -ne 0 ]]; then
    echo "install-deps: missing Debian packages: ${debs[*]} (run as root to install them)" >&2
  else
    echo "install-deps: apt-get install ${debs[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends "${debs[@]}" >/dev/null 2>&1 || {
      apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends "${debs[@]}" >/dev/null; }
  fi
fi
# keepalived, conntrackd and bird must not run as system services: the tests start their own instances (lvs-ha runs
# its own conntrackd for lvs.conntrack_sync and its own BIRD for announce). Debian's prometheus package (installed
# for promtool) starts a server on :9090: stopped and disabled, as is bird's.
for unit in keepalived conntrackd prometheus bird; do
  if [[ $EUID -eq 0 ]] && have systemctl && systemctl is-active -q "$unit" 2>/dev/null; then
    systemctl stop "$unit" || true
  fi
  if [[ ($unit == prometheus || $unit == bird) && $EUID -eq 0 ]] && have systemctl \
     && systemctl is-enabled -q "$unit" 2>/dev/null; then
    systemctl disable -q "$unit" 2>/dev/null || true
  fi
done

# Everything Python runs from a project virtualenv (.venv) on Debian's own interpreter, as an operator's install
# would: Debian 12's system Python refuses `pip install` (PEP 668), and nothing may lean on packages that happen to
# be installed globally. BASE_PY and VENV override the defaults.
BASE_PY=${BASE_PY:-/usr/bin/python3}
VENV=${VENV:-.venv}
if ! "$BASE_PY" -c 'import venv, ensurepip' 2>/dev/null; then
  if [[ $EUID -eq 0 ]]; then
    echo "install-deps: apt-get install python3-venv" >&2
    apt-get install -y -q --no-install-recommends python3-venv >/dev/null 2>&1 || {
      apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends python3-venv >/dev/null; }
  else
    echo "install-deps: $BASE_PY has no venv module (install python3-venv as root)" >&2; exit 1
  fi
fi
if [[ ! -x $VENV/bin/python ]] || ! "$VENV/bin/python" -c 'import sys; sys.exit(sys.prefix == sys.base_prefix)'; then
  echo "install-deps: creating the virtualenv $VENV on $BASE_PY" >&2
  rm -rf "$VENV"
  "$BASE_PY" -m venv "$VENV"
fi
PY="$VENV/bin/python"
if ! "$PY" -c 'import ha, pytest, pytest_asyncio, pytest_timeout, trustme, hypothesis, dns, prometheus_client, pyroute2, aiohttp, yaml, importlinter' 2>/dev/null \
   || ! [[ -x $VENV/bin/lvs-ha && -x $VENV/bin/ruff && -x $VENV/bin/lint-imports ]] \
   || [[ pyproject.toml -nt $VENV/.deps-stamp ]]; then
  echo "install-deps: pip install -e .[test] into $VENV" >&2
  # editable_mode=compat: a plain path entry in site-packages, not an import hook that every Python start would
  # load (about 20 ms of each `lvs-ha` command); older pips without --config-settings get the default
  pipi() {
    local out rc=0
    out=$("$PY" -m pip install -q --disable-pip-version-check "$@" 2>&1) || rc=$?
    grep -vE '^(WARNING|DEPRECATION)' <<<"$out" >&2 || true
    return "$rc"
  }
  pipi -e '.[test]' --config-settings editable_mode=compat || pipi -e '.[test]' || true
  "$PY" -c 'import ha, pytest, pytest_asyncio, pytest_timeout, trustme, hypothesis, importlinter' \
    || { echo "install-deps: pip install failed" >&2; exit 1; }
  touch "$VENV/.deps-stamp"
fi
