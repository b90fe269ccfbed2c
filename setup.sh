#!/usr/bin/env bash
# Installs everything spade-tts needs on a fresh Debian/Ubuntu machine: the offline voices,
# the text corpus, Chromium for the report test, torch (CPU wheel unless one is installed),
# and the package itself in editable mode with its test extras.
set -euo pipefail
cd "$(dirname "$0")"
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
APT_PACKAGES="flite festival festvox-us-slt-hts festvox-kallpc16k festvox-kdlpc16k fortunes fortunes-min sox libsndfile1 chromium"
missing=""
for p in $APT_PACKAGES; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing
fi
PY=${PYTHON:-python3}
# torch first, so that resolving the package never pulls a multi-GB CUDA build on a CPU machine.
$PY -c "import torch" 2>/dev/null || $PY -m pip install -q torch==2.13.0
$PY -m pip install -q -e '.[test]'
