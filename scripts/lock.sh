#!/usr/bin/env bash
# Regenerate both locks, each resolved in a new, empty virtual environment:
#   requirements.lock      the runtime set (`pip install -e .`): README's set-up installs it
#   requirements-dev.lock  the runtime set + the [dev] test and dev tools: .ci/run installs it
# The dev set is resolved first and the fast suite must pass in it; the runtime set is then
# resolved with the dev set as constraints (the two agree on every shared package) and must run
# `unlock-lens demo` on its own; scripts/check_locks.py then checks both against pyproject.toml
# and each other. The locks are written only when all of that passes.
#
# Usage: scripts/lock.sh            (takes ~25 min: two installs, the fast suite, the demo)
# torch is pinned to the CPU wheel that `pip install torch==2.13.0` takes on this workplace's
# machines (a bare `torch` pulls CUDA).
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH="${TORCH:-torch==2.13.0}"
root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT

fresh_env() {  # fresh_env DIR: a new venv with pip and the CPU torch
    python3 -m venv "$1"
    "$1/bin/python" -m pip install -q --upgrade pip
    "$1/bin/python" -m pip install -q "$TORCH"
}
freeze() {  # freeze PY OUT HEADER...: the environment as a lock, torch without its +cpu tag
    local py="$1" out="$2"; shift 2
    { printf '# %s\n' "$@"; "$py" -m pip freeze --exclude-editable | sed -E 's/^torch==([0-9.]+)\+cpu$/torch==\1/'; } > "$out"
}
stamp="scripts/lock.sh, $(date -u +%F), Python $(python3 -c 'import platform; print(platform.python_version())')"

echo "== dev set: resolve, run the fast suite"
fresh_env "$root/dev"
"$root/dev/bin/python" -m pip install -q -e ".[dev]"
"$root/dev/bin/python" -m pytest -q -p no:cacheprovider
freeze "$root/dev/bin/python" "$root/requirements-dev.lock" \
    "The set the fast suite passed with: runtime + [dev] test and dev tools ($stamp); what .ci/run installs." \
    "Install: pip install torch==2.13.0 && pip install -r requirements-dev.lock && pip install --no-deps -e .   (the runtime alone: requirements.lock)"

echo "== runtime set: resolve within the dev set, run the demo"
fresh_env "$root/runtime"
"$root/runtime/bin/python" -m pip install -q -c "$root/requirements-dev.lock" -e .
"$root/runtime/bin/python" -m pip check
"$root/runtime/bin/unlock-lens" demo --n-test 40 --html "$root/demo.html"
freeze "$root/runtime/bin/python" "$root/requirements.lock" \
    "The runtime set: what \`pip install -e .\` needs, at the versions the fast suite passed with ($stamp)." \
    "Install: pip install torch==2.13.0 && pip install -r requirements.lock && pip install --no-deps -e .   (tests and dev tools: requirements-dev.lock)"

echo "== check both"
"$root/dev/bin/python" scripts/check_locks.py "$root/requirements.lock" "$root/requirements-dev.lock"
cp "$root/requirements.lock" "$root/requirements-dev.lock" .
echo "wrote requirements.lock ($(grep -vc '^#' requirements.lock) packages), requirements-dev.lock ($(grep -vc '^#' requirements-dev.lock) packages)"
