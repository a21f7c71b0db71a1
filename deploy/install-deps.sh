#!/usr/bin/env bash
# Installs what lvs-ha's tests, demo and benchmarks need on a Debian machine (run as root).
# Idempotent: a second run with everything present installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}

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
# keepalived and conntrackd must not run as system services: the tests start their own instances (lvs-ha runs
# its own conntrackd for lvs.conntrack_sync).
for unit in keepalived conntrackd; do
  if [[ $EUID -eq 0 ]] && have systemctl && systemctl is-active -q "$unit" 2>/dev/null; then
    systemctl stop "$unit" || true
  fi
done

if ! "$PY" -c 'import ha, pytest, pytest_asyncio, pytest_timeout, trustme, hypothesis, dns, prometheus_client, pyroute2, aiohttp, yaml' 2>/dev/null \
   || ! "$PY" -c 'import importlib.metadata as m; m.distribution("lvs-ha")' 2>/dev/null \
   || [[ pyproject.toml -nt .deps-stamp ]]; then
  echo "install-deps: pip install -e .[test]" >&2
  # editable_mode=compat: a plain path entry in site-packages, not an import hook that every Python start would
  # load (about 20 ms of each `lvs-ha` command); older pips without --config-settings get the default
  pipi() {
    local out rc=0
    out=$("$PY" -m pip install -q --disable-pip-version-check "$@" 2>&1) || rc=$?
    grep -vE '^(WARNING|DEPRECATION)' <<<"$out" >&2 || true
    return "$rc"
  }
  pipi -e '.[test]' --config-settings editable_mode=compat || pipi -e '.[test]' || true
  "$PY" -c 'import ha, pytest, pytest_asyncio, pytest_timeout, trustme, hypothesis' || { echo "install-deps: pip install failed" >&2; exit 1; }
  touch .deps-stamp
fi
