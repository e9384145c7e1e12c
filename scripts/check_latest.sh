#!/usr/bin/env bash
# Canary for new releases (for maintainers; not part of .ci/run, which must stay deterministic).
#
# Installs the newest releases that pyproject.toml's ranges admit into a throw-away virtual
# environment, runs the fast suite there, and prints which packages differ from
# requirements-dev.lock and whether the suite passed. torch stays the CPU wheel (TORCH=...
# to change it: the newest torch on PyPI is a multi-GB CUDA build).
#
# Usage: scripts/check_latest.sh [pytest args...]     exit 0: suite passed on the newest set
set -uo pipefail
cd "$(dirname "$0")/.."
TORCH="${TORCH:-torch==2.13.0}"
root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT
python3 -m venv "$root/venv"
py="$root/venv/bin/python"
"$py" -m pip install -q --upgrade pip >/dev/null 2>&1
"$py" -m pip install -q "$TORCH" >/dev/null 2>&1
echo "$TORCH" > "$root/torch.txt"  # an eager upgrade would otherwise swap in the CUDA build
if ! "$py" -m pip install -q --upgrade --upgrade-strategy eager -c "$root/torch.txt" -e ".[dev]" \
        > "$root/install.log" 2>&1; then
    echo "CANARY: install of the newest releases FAILED"; tail -20 "$root/install.log"; exit 1
fi
"$py" -m pip freeze --exclude-editable | sed -E 's/^([^=]+)==([^+]+)(\+.*)?$/\1==\2/' | sort -f > "$root/latest.txt"
grep -v '^#' requirements-dev.lock | sort -f > "$root/lock.txt"

echo "== packages whose newest admitted release differs from requirements-dev.lock"
"$py" - "$root/lock.txt" "$root/latest.txt" <<'PY'
import re, sys
def read(p):
    out = {}
    for line in open(p):
        if "==" in line:
            name, version = line.strip().split("==", 1)
            out[re.sub(r"[-_.]+", "-", name).lower()] = version
    return out
lock, latest = read(sys.argv[1]), read(sys.argv[2])
rows = [(n, lock.get(n, "-"), latest.get(n, "-")) for n in sorted(set(lock) | set(latest))
        if lock.get(n) != latest.get(n)]
for n, a, b in rows:
    print(f"  {n:32s} lock {a:14s} newest {b}")
print(f"  ({len(rows)} differ)" if rows else "  (none: the lock is the newest set)")
PY
echo "== fast suite on the newest set"
"$py" -m pytest -q -p no:cacheprovider "$@" 2>&1 | tail -15
rc=${PIPESTATUS[0]}
if [[ $rc -eq 0 ]]; then echo "CANARY: PASSED on the newest releases"; else echo "CANARY: FAILED (pytest exit $rc)"; fi
exit $rc
