#!/usr/bin/env bash
# Set up a virtual environment in .venv with momil and everything it needs.
#
#   bash scripts/setup.sh          # the package
#   bash scripts/setup.sh test     # the package and the test tools
#
# PyTorch: by default torch==2.14.1 and torchvision==0.29.1 are installed with pip. On machines whose pip
# is configured with a local wheel mirror (as our development and CI machines are) they come from local
# disk; elsewhere pip takes them from PyPI, where the Linux x86_64 build is the CUDA 12 build, so a GPU
# user gets a GPU-enabled torch. To choose another build, set MOMIL_TORCH to pip arguments, e.g.
#   MOMIL_TORCH="torch torchvision --index-url https://download.pytorch.org/whl/cu126" bash scripts/setup.sh
# A torch/torchvision pair that already imports in .venv is kept as it is.
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-}"
python_bin="${PYTHON:-python3}"
venv="${MOMIL_VENV:-.venv}"

if [ ! -x "$venv/bin/python" ]; then
    echo "setup: creating $venv with $("$python_bin" --version)"
    "$python_bin" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)

if ! "$venv/bin/python" -c "import torch, torchvision" >/dev/null 2>&1; then
    if [ -n "${MOMIL_TORCH:-}" ]; then
        echo "setup: installing PyTorch: $MOMIL_TORCH"
        # shellcheck disable=SC2086
        "${pip[@]}" install $MOMIL_TORCH
    else
        echo "setup: installing torch==2.14.1 torchvision==0.29.1"
        "${pip[@]}" install "torch==2.14.1" "torchvision==0.29.1" \
            || { echo "setup: pinned PyTorch unavailable here; installing the newest compatible release"; \
                 "${pip[@]}" install "torch>=2.4" torchvision; }
    fi
fi

if [ "$extra" = "test" ]; then
    "${pip[@]}" install -e ".[test]"
else
    "${pip[@]}" install -e .
fi
echo "setup: done ($("$venv/bin/python" -c 'import torch, momil; print("momil", momil.__version__, "torch", torch.__version__, "cuda" if torch.cuda.is_available() else "cpu")'))"
