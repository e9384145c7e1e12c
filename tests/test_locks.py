"""The runtime lock (README's set-up) and the dev lock (.ci/run) against pyproject.toml and
each other: scripts/check_locks.py on the committed files, and on locks broken on purpose."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("check_locks", ROOT / "scripts" / "check_locks.py")
check_locks = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check_locks)


def test_the_committed_locks_agree_with_pyproject_and_each_other():
    runtime = check_locks.read_lock(ROOT / "requirements.lock")
    dev = check_locks.read_lock(ROOT / "requirements-dev.lock")
    assert check_locks.problems(ROOT / "requirements.lock", ROOT / "requirements-dev.lock") == []
    assert {"torch", "transformer-lens", "typer"} <= set(runtime) and "pytest" not in runtime
    assert {"pytest", "ruff", "mypy"} <= set(dev) and len(runtime) < len(dev)


def test_a_broken_lock_is_named(tmp_path):
    runtime = (ROOT / "requirements.lock").read_text()
    dev = (ROOT / "requirements-dev.lock").read_text()
    pins = check_locks.read_lock(ROOT / "requirements.lock")
    cases = {
        "holds the dev tool pytest": (runtime + "pytest==8.0.0\n", dev),
        "lacks typer": ("".join(line + "\n" for line in runtime.splitlines()
                                if not line.startswith("typer==")), dev),
        "outside pyproject's >=2.0": (runtime.replace(f"pandas=={pins['pandas']}", "pandas==1.5.3"),
                                      dev.replace(f"pandas=={pins['pandas']}", "pandas==1.5.3")),
        f"requirements-dev.lock {pins['einops']}": (runtime.replace(f"einops=={pins['einops']}",
                                                                    "einops==0.8.99"), dev),
    }
    for expected, (runtime_text, dev_text) in cases.items():
        (tmp_path / "requirements.lock").write_text(runtime_text)
        (tmp_path / "requirements-dev.lock").write_text(dev_text)
        found = check_locks.problems(tmp_path / "requirements.lock", tmp_path / "requirements-dev.lock")
        assert any(expected in line for line in found), (expected, found)
