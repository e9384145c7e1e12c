"""Shared helpers for the benchmarks: models, prompts, interleaved timing, RSS sampling."""

from __future__ import annotations

import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import psutil  # noqa: E402
import torch  # noqa: E402

REAL_MODELS = ("smollm2-135m-instruct", "gemma-3-270m")
RANDOM_CONFIG = dict(arch="qwen2", d_model=1024, n_layers=12, n_heads=16)
SMALL_CONFIG = dict(arch="qwen2", d_model=256, n_layers=6, n_heads=4)

_TEXT = (
    "Tom has apples and buys more at the market before noon. How many apples does he have "
    "after he gives three to his sister and eats one himself on the way home"
)
_WORDS = _TEXT.split(" ")


def bench_dir() -> Path:
    """Cache for benchmark models: ``$UNLOCK_LENS_BENCH_DIR`` or ``<tmp>/unlock_lens_bench``."""
    path = Path(os.environ.get("UNLOCK_LENS_BENCH_DIR", Path(tempfile.gettempdir()) / "unlock_lens_bench"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def random_model_dir(small: bool = False) -> Path:
    """The random mid-size Qwen2 (d_model 1024, 12 layers, 16 heads), built once and cached.

    ``small``: d_model 256, 6 layers, 4 heads (``"random-small"``, for quick memory runs).
    """
    from unlock_lens.random_models import build_random_model

    cfg = SMALL_CONFIG if small else RANDOM_CONFIG
    path = bench_dir() / f"random-{cfg['arch']}-d{cfg['d_model']}-l{cfg['n_layers']}"
    if not (path / "config.json").is_file():
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        build_random_model(
            tmp, cfg["arch"], d_model=cfg["d_model"], n_layers=cfg["n_layers"], n_heads=cfg["n_heads"],
            n_ctx=2048,
        )
        os.replace(tmp, path)
    return path


def load(name: str) -> Any | None:
    """``"random"``, ``"random-small"`` or a registry name as a bridge; ``None`` if unavailable."""
    from unlock_lens.models import load_model

    try:
        if name.startswith("random"):
            return load_model(str(random_model_dir(small=name == "random-small")))
        return load_model(name)
    except Exception as err:  # a missing real model is a skip, not a failure
        print(f"[skip] {name}: not available offline ({type(err).__name__}: {str(err)[:160]})")
        return None


def make_prompts(n: int, n_words: int, seed: int = 0) -> list[str]:
    """``n`` deterministic prompts of about ``n_words`` words each (lengths vary by +-25%)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        k = max(2, int(n_words * (0.75 + 0.5 * torch.rand(1, generator=g).item())))
        idx = torch.randint(len(_WORDS), (k,), generator=g).tolist()
        out.append(f"Question {i}: " + " ".join(_WORDS[j] for j in idx) + "? Answer:")
    return out


def machine() -> dict[str, Any]:
    """CPU model, logical cores, torch threads and library versions."""
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from importlib.metadata import version

    import transformers

    return {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        # transformer_lens has no __version__ attribute: ask the installed distribution
        "transformer_lens": version("transformer-lens"),
        "python": platform.python_version(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def header(title: str) -> None:
    print(f"== {title}")
    print("   " + json.dumps(machine()))


def interleaved(
    fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Wall-clock seconds of each callable, run round-robin ``repeats`` times (after warm-up).

    Round-robin order spreads load from other processes over all variants, so ratios of
    medians are meaningful on a shared machine even when absolute times drift.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(repeats):
        names = list(fns) if r % 2 == 0 else list(reversed(fns))
        for name in names:
            gc.collect()
            t0 = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t0)
    return times


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def spread(xs: list[float]) -> str:
    """``median [min-max]`` in seconds."""
    return f"{med(xs):.3f}s [{min(xs):.3f}-{max(xs):.3f}]"


def ratio_line(label: str, num: float, den: float, target: str = "") -> str:
    r = num / den if den > 0 else float("nan")
    return f"   {label:<58} {r:6.3f}x {target}"


class RssPeak:
    """Peak resident set size above the level at entry, sampled every ``interval`` seconds."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.proc = psutil.Process()
        self.base = 0
        self.peak = 0
        self._stop = threading.Event()

    def __enter__(self) -> RssPeak:
        gc.collect()
        self.base = self.peak = self.proc.memory_info().rss
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.interval)

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)

    @property
    def delta_mb(self) -> float:
        return (self.peak - self.base) / 2**20


def run_worker(module: str, args: list[str]) -> dict[str, Any]:
    """Run ``python -m module --worker ...`` in a fresh process; parse its last JSON line."""
    proc = subprocess.run(
        [sys.executable, "-m", module, "--worker", *args],
        capture_output=True, text=True, check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"worker {module} {args} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
