#!/usr/bin/env bash
# Regenerate requirements.lock: resolve the project's ranges in a new, empty virtual
# environment, run the fast test suite there, and write the lock only if the suite passed.
#
# Usage: scripts/lock.sh            (takes ~20 min: install + the fast suite)
# The lock pins every runtime and [dev] dependency; torch is pinned to the CPU wheel that
# `pip install torch==2.13.0` takes on this workplace's machines (a bare `torch` pulls CUDA).
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH="${TORCH:-torch==2.13.0}"
env_dir="$(mktemp -d)/venv"
trap 'rm -rf "$(dirname "$env_dir")"' EXIT

python3 -m venv "$env_dir"
py="$env_dir/bin/python"
"$py" -m pip install -q --upgrade pip
"$py" -m pip install -q "$TORCH"
"$py" -m pip install -q -e ".[dev]"
"$py" -m pytest -q -p no:cacheprovider

tmp="$(mktemp requirements.lock.XXXXXX)"
{
    echo "# The exact set the fast suite passed with (scripts/lock.sh, $(date -u +%F), Python $("$py" -c 'import platform; print(platform.python_version())'))."
    echo "# Install: pip install torch==2.13.0 && pip install -r requirements.lock && pip install --no-deps -e ."
    "$py" -m pip freeze --exclude-editable | sed -E 's/^torch==([0-9.]+)\+cpu$/torch==\1/'
} > "$tmp"
mv "$tmp" requirements.lock
echo "wrote requirements.lock ($(grep -vc '^#' requirements.lock) packages)"
