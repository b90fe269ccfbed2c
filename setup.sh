#!/usr/bin/env bash
# Installs everything spade-tts needs on a fresh Debian/Ubuntu machine: the offline voices,
# the text corpus, Chromium for the report test, torch (CPU wheel unless one is installed),
# the package itself in editable mode with its test extras, and the families' codec packages (for the
# random-init codec tests; no weights).
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
$PY -m pip install -q -e '.[test,codecs]'
# The codec packages whose declared requirements could move torch (they ask for torchaudio) go in with
# --no-deps, pinned; what they import came with the `codecs` extra above. Only the missing ones are
# installed, so a second run costs seconds. SPADE_CODECS=0 skips them.
CODEC_PINS="torchaudio==2.11.1 descript-audiotools==0.7.2 descript-audio-codec==1.0.0 s3tokenizer==0.3.0"
if [ "${SPADE_CODECS:-1}" != 0 ]; then
  missing=$($PY -c '
import sys
from importlib.metadata import PackageNotFoundError, version
def have(pin):
    name, want = pin.split("==")
    try:
        return version(name) == want
    except PackageNotFoundError:
        return False
print(" ".join(pin for pin in sys.argv[1:] if not have(pin)))' $CODEC_PINS)
  [ -z "$missing" ] || $PY -m pip install -q --no-deps $missing
  # PyPI's torchaudio bundles CUDA-linked extension libraries, which cannot load beside the CPU torch wheel, and
  # then `import torchaudio` fails. Its pure-Python part (transforms, functional), all the codecs use, runs
  # without them: torchaudio skips extension libraries it does not find. So, on such a machine, remove them.
  if ! $PY -c "import torchaudio" >/dev/null 2>&1; then
    ta=$($PY -c "import importlib.util, os; print(os.path.dirname(importlib.util.find_spec('torchaudio').origin))")
    rm -f "$ta"/lib/*.so
    $PY -c "import torchaudio" || echo "setup.sh: torchaudio does not import; the codec tests that need it skip" >&2
  fi
fi
