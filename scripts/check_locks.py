"""Check the two locks against pyproject.toml and each other; print one line per problem.

    python scripts/check_locks.py [RUNTIME_LOCK DEV_LOCK]     (default: the committed locks)

- requirements.lock (README's set-up) pins every runtime dependency within pyproject's range and
  holds no test or dev tool;
- requirements-dev.lock (.ci/run) pins every runtime and [dev] dependency within its range;
- every package of the runtime lock is in the dev lock at the same version.
Exit 0 when both hold, 1 otherwise. scripts/lock.sh runs it before writing new locks;
tests/test_locks.py runs it on the committed ones.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
#: tools only the tests and maintainers need: never in the runtime lock (wandb is no such tool:
#: transformer-lens itself requires it)
DEV_TOOLS = ("pytest", "ruff", "mypy", "hypothesis", "nbclient", "ipykernel", "lm-eval")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path) -> dict[str, str]:
    """``{canonical name: version}`` of a pip-freeze style lock."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            if not sep:
                raise ValueError(f"{path.name}: {line!r} is not pinned with ==")
            pins[canonical(name)] = version
    return pins


def _unmet(requirements: list[str], pins: dict[str, str], lock: str) -> list[str]:
    out = []
    for text in requirements:
        req = Requirement(text)
        version = pins.get(canonical(req.name))
        if version is None:
            out.append(f"{lock} lacks {req.name} (pyproject: {text})")
        elif req.specifier and not req.specifier.contains(version, prereleases=True):
            out.append(f"{lock} pins {req.name}=={version}, outside pyproject's {req.specifier}")
    return out


def problems(runtime_lock: Path, dev_lock: Path, pyproject: Path = ROOT / "pyproject.toml") -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    runtime, dev = read_lock(runtime_lock), read_lock(dev_lock)
    found = _unmet(project["dependencies"], runtime, runtime_lock.name)
    found += _unmet(project["dependencies"] + project["optional-dependencies"]["dev"], dev, dev_lock.name)
    found += [f"{runtime_lock.name} holds the dev tool {name}" for name in DEV_TOOLS if name in runtime]
    found += [f"{runtime_lock.name} pins {name}=={version}, {dev_lock.name} "
              f"{dev.get(name, 'lacks it')}" for name, version in runtime.items() if dev.get(name) != version]
    return found


def main(argv: list[str]) -> int:
    paths = [Path(a) for a in argv] or [ROOT / "requirements.lock", ROOT / "requirements-dev.lock"]
    found = problems(*paths)
    for line in found:
        print(line)
    print(f"locks: {'FAIL' if found else 'ok'} ({len(read_lock(paths[0]))} runtime, "
          f"{len(read_lock(paths[1]))} dev packages)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
