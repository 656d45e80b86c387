#!/usr/bin/env bash
# Create a virtual environment with a torch/torchvision pair that imports cleanly, then
# nnunet-mass (editable) and its test tools. Usage: setup_venv.sh VENV_DIR
#
# Why pin torch here and not in pyproject.toml: nnU-Net's trainer search imports timm ->
# torchvision, and a torchvision that does not match torch breaks every `-tr` with an
# external trainer. On a GPU machine users keep their own CUDA torch (`pip install -e .`).
set -euo pipefail
venv="${1:-.venv}"
python="${PYTHON:-python3}"

case "$(uname -m)" in
  x86_64)  torch_pair="torch==2.14.1 torchvision==0.29.1" ;;
  aarch64) torch_pair="torch==2.9.1 torchvision==0.24.1" ;;
  *) echo "setup_venv: no tested torch/torchvision pair for $(uname -m); install them yourself, then pip install -e '.[test]'" >&2
     exit 1 ;;
esac

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
# shellcheck disable=SC2086  # the pair is two words on purpose
"$venv/bin/python" -m pip install --quiet $torch_pair
"$venv/bin/python" -m pip install --quiet -e '.[test]' $torch_pair

if ! "$venv/bin/python" -c "import torch, torchvision, nnunetv2" 2>"$venv/import_check.log"; then
  echo "setup_venv: 'import torch, torchvision, nnunetv2' fails in $venv:" >&2
  cat "$venv/import_check.log" >&2
  echo "Install a matching torch/torchvision pair ($torch_pair on this machine) and re-run." >&2
  exit 1
fi
"$venv/bin/python" -c "import torch, torchvision; print(f'setup_venv: torch {torch.__version__}, torchvision {torchvision.__version__} ok')"
