#!/usr/bin/env bash
# The main job, end to end on a fresh Debian machine: install, start the services,
# build a real busybox image from the host's busybox-static, load it and run it.
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/setup.sh
DY=.venv/bin/dockyard
$DY up
image=$(mktemp --suffix=.tar)
trap 'rm -f "$image"' EXIT
.venv/bin/python deploy/mkimage.py --format docker --name busybox:latest -o "$image" >/dev/null
$DY load -i "$image"
$DY run --rm busybox echo hello from dockyard
