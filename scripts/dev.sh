#!/usr/bin/env bash
# One entry point for the README's commands. Installs into .venv/ (once; again only when
# pyproject.toml changes), then runs the requested job:
#   bash scripts/dev.sh demo        the main job on an embedded default model
#   bash scripts/dev.sh test        the test suite (what CI runs)
#   bash scripts/dev.sh test-zoo    the slow torchvision zoo tests (both exporters)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
STAMP="$VENV/.onnxprune-installed"
want=$(sha256sum pyproject.toml | cut -c1-16)

install() {
  if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
  fi
  if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$want" ]; then
    echo "installing onnxprune and its dependencies into $VENV (first run takes a few minutes)" >&2
    "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
    "$VENV/bin/python" -m pip install -q -e ".[test]"
    echo "$want" > "$STAMP"
  fi
}

job=${1:-demo}
shift || true
install
case "$job" in
  install) ;;
  demo) exec "$VENV/bin/onnxprune" demo "$@" ;;
  test) exec "$VENV/bin/python" -m pytest -q -x "$@" ;;
  test-zoo) exec "$VENV/bin/python" -m pytest -q -m zoo "$@" ;;
  *) echo "usage: bash scripts/dev.sh [demo|test|test-zoo|install] [args...]" >&2; exit 2 ;;
esac
