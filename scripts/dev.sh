#!/usr/bin/env bash
# One entry point for the README's commands. Installs into .venv/ (once; again only when
# pyproject.toml changes), then runs the requested job:
#   bash scripts/dev.sh demo        the main job on an embedded default model
#   bash scripts/dev.sh test        the test suite (what CI runs)
#   bash scripts/dev.sh test-zoo    the slow torchvision zoo tests (both exporters)
#   bash scripts/dev.sh dgl-env     the pinned DGL environment .venv-dgl/ (torch 2.2.1, dgl 2.1.0;
#                                   requirements-dgl.txt) for gat-ppo --gat-backend dgl
#   bash scripts/dev.sh test-dgl    the DGL tests (GAT backends agree, a gat-ppo run on DGL) in it
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
STAMP="$VENV/.onnxprune-installed"
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)

install() {
  if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
  fi
  if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$want" ]; then
    echo "installing onnxprune and its dependencies into $VENV (first run takes a few minutes)" >&2
    "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
    "$VENV/bin/python" -m pip install -q -c constraints.txt -e ".[gpu,demo,plot,test,ray]"
    echo "$want" > "$STAMP"
  fi
}

DGL_VENV=.venv-dgl
DGL_STAMP="$DGL_VENV/.onnxprune-installed"

install_dgl() {
  local want_dgl
  want_dgl=$(cat requirements-dgl.txt pyproject.toml | sha256sum | cut -c1-16)
  if [ ! -x "$DGL_VENV/bin/python" ]; then
    "$PY" -m venv "$DGL_VENV"
  fi
  if [ ! -f "$DGL_STAMP" ] || [ "$(cat "$DGL_STAMP")" != "$want_dgl" ]; then
    echo "installing the DGL environment into $DGL_VENV (first run takes about 2 minutes)" >&2
    "$DGL_VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
    "$DGL_VENV/bin/python" -m pip install -q -r requirements-dgl.txt
    "$DGL_VENV/bin/python" -m pip install -q --no-deps -e .
    echo "$want_dgl" > "$DGL_STAMP"
  fi
}

job=${1:-demo}
shift || true
case "$job" in
  dgl-env) install_dgl; exit 0 ;;
  test-dgl) install_dgl; exec "$DGL_VENV/bin/python" -m pytest -q -m dgl tests/test_gat_ppo.py "$@" ;;
esac
install
case "$job" in
  install) ;;
  demo) exec "$VENV/bin/onnxprune" demo "$@" ;;
  test) exec "$VENV/bin/python" -m pytest -q -x "$@" ;;
  test-zoo) exec "$VENV/bin/python" -m pytest -q -m zoo "$@" ;;
  *) echo "usage: bash scripts/dev.sh [demo|test|test-zoo|install|dgl-env|test-dgl] [args...]" >&2; exit 2 ;;
esac
