#!/usr/bin/env bash
# Install what Dockyard needs on a Debian 12 host (idempotent), and create the venv.
#   apt: runc crun busybox-static docker-registry skopeo umoci tini catatonit ...
#   venv: .venv with Dockyard installed in editable mode (+ the extras in DOCKYARD_EXTRAS,
#         default test,dev; `make bench` adds bench), and the shim's idle monitor in .venv/bin
# Set DOCKYARD_SKIP_APT=1 to skip the apt step.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  runc crun busybox-static docker-registry skopeo umoci tini catatonit
  iproute2 procps psmisc util-linux curl file attr libcap2-bin python3-venv
  docker.io containerd  # the docker CLI (gateway tests); dockerd + containerd, started privately by the interop test
  gcc libc6-dev  # builds the shim's idle monitor (services/shim/idle.c)
)

if [ "$(id -u)" != 0 ]; then
  echo "error: run as root (Dockyard mounts overlayfs and runs runc)" >&2
  exit 1
fi

if [ "${DOCKYARD_SKIP_APT:-0}" != 1 ]; then
  missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing: ${missing[*]}"
    # no systemd here: keep maintainer scripts from starting services
    [ -e /usr/sbin/policy-rc.d ] || { printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; }
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi

# crun refuses a cgroup v1 hybrid host while a controller is bound only to cgroup2
# (on these hosts: hugetlb). Binding it to a v1 hierarchy fixes that; runc does not care.
if [ -r /sys/fs/cgroup/unified/cgroup.controllers ]; then
  for c in $(cat /sys/fs/cgroup/unified/cgroup.controllers); do
    if ! mountpoint -q "/sys/fs/cgroup/$c" 2>/dev/null; then
      mkdir -p "/sys/fs/cgroup/$c" 2>/dev/null || true
      mount -t cgroup -o "$c" cgroup "/sys/fs/cgroup/$c" 2>/dev/null || true
    fi
  done
fi

# Debian's own interpreter (python3-venv above) unless PYTHON says otherwise: it is the one a
# fresh host has, and its optimised build starts and runs faster than a locally built one
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON; elif [ -x /usr/bin/python3 ]; then PY=/usr/bin/python3; else PY=python3; fi
if [ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && [ -x /usr/bin/python3 ] \
  && ! grep -q "^home = /usr/bin\$" .venv/pyvenv.cfg 2>/dev/null; then
  echo "recreating .venv on $PY"
  rm -rf .venv
fi
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# compat mode: the editable install is one path in a .pth file; the default (an import hook)
# makes every interpreter start-up import pathlib, re, urllib... (~25 ms per `dockyard` call)
.venv/bin/python -m pip install -q --disable-pip-version-check --config-settings editable_mode=compat \
  -e ".[${DOCKYARD_EXTRAS:-test,dev}]"
# the console script pip writes imports `re` before main(); the hot path needs none of it. It
# also skips `site` (-S: ~6 ms of each call here): the checkout and site-packages go on sys.path
# by hand, and cli.__main__ runs site.addsitedir (the .pth files) before a command leaves the hot path
site_packages=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
cat > .venv/bin/dockyard <<EOF
#!$PWD/.venv/bin/python -S
import sys
sys.path[1:1] = ["$PWD", "$site_packages"]
from cli.__main__ import main
sys.exit(main())
EOF
# the shim's idle monitor (an idle shim execs into it: ~0.2 MB instead of a Python interpreter);
# rebuilt only when idle.c is newer, built aside and renamed so a running shim never sees half a file
idle_src=services/shim/idle.c idle_bin=.venv/bin/dockyard-shim-idle
if [ ! -x "$idle_bin" ] || [ "$idle_src" -nt "$idle_bin" ]; then
  cc -O2 -Wall -Wextra -o "$idle_bin.tmp.$$" "$idle_src"
  mv -f "$idle_bin.tmp.$$" "$idle_bin"
fi
echo "setup done: .venv ready ($(.venv/bin/python --version))"
