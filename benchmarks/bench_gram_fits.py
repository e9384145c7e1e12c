"""Alignment fits from d x d sufficient statistics (``align/stats.py``) against the Gram floor.

Time, at n paired rows, d_src 576 -> d_tgt 640, k 64 (Gemma-3-270M-like widths):

* **gram floor**: one pass accumulating ``GramStats`` over the rows, 1024 at a time;
* **streamed <method>**: the same pass plus ``fit_from_stats`` (target: <= 3x the floor);
* **dense <method>**: ``fit_alignment`` on the two full matrices (today's path).

Peak memory (each point a fresh process, psutil RSS sampling above the post-import level):
a streamed svd fit whose rows are generated chunk by chunk and never materialised, against the
dense fit of the same rows, at two row counts. The streamed peak must not grow with n.

    python -m benchmarks.bench_gram_fits [--quick] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator

import torch

from benchmarks._common import RssPeak, header, interleaved, med, ratio_line, run_worker, spread

METHODS = ("svd", "procrustes", "cca", "ridge")
D_SRC, D_TGT, RANK, CHUNK = 576, 640, 64, 1024


class PairedRows:
    """Activation-like paired rows (shared 128-dim latent, decaying spectrum, strong means, noise).

    Chunk ``i`` depends only on ``(seed, i)``, so the streamed and dense runs see the same rows.
    """

    def __init__(self, d_src: int, d_tgt: int, latent: int = 128, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        spec = 10.0 / torch.arange(1, latent + 1, dtype=torch.float32).sqrt()
        self.mix_src = torch.randn(latent, d_src, generator=g) * spec[:, None]
        self.mix_tgt = torch.randn(latent, d_tgt, generator=g) * spec[:, None]
        self.mu_src = 5 * torch.randn(d_src, generator=g)
        self.mu_tgt = 5 * torch.randn(d_tgt, generator=g)
        self.seed = seed

    def chunk(self, i: int, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        Z = torch.randn(rows, self.mix_src.shape[0], generator=g)
        X = Z @ self.mix_src + torch.randn(rows, self.mix_src.shape[1], generator=g) + self.mu_src
        Y = Z @ self.mix_tgt + torch.randn(rows, self.mix_tgt.shape[1], generator=g) + self.mu_tgt
        return X, Y

    def chunks(self, n: int, size: int = CHUNK) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i, start in enumerate(range(0, n, size)):
            yield self.chunk(i, min(size, n - start))

    def dense(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = list(self.chunks(n))
        return torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def reference_f64(method: str, X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor | None:
    """W of svd (uncentred) or ridge (default alpha) computed on the float64 rows."""
    X, Y = X.double(), Y.double()
    if method == "svd":
        Vs = torch.linalg.svd(X, full_matrices=False)[2][:RANK].T
        Vt = torch.linalg.svd(Y, full_matrices=False)[2][:RANK].T
        return Vs @ torch.linalg.pinv(X @ Vs) @ (Y @ Vt) @ Vt.T
    if method == "ridge":
        Xc, Yc = X - X.mean(0), Y - Y.mean(0)
        alpha = 1e-2 * float(Xc.square().sum()) / X.shape[1]
        eye = torch.eye(X.shape[1], dtype=X.dtype)
        return torch.linalg.solve(Xc.T @ Xc + alpha * eye, Xc.T @ Yc)
    return None


def time_size(n: int, repeats: int) -> dict[str, float]:
    """Interleaved timings at ``n`` rows; returns median seconds by variant."""
    from unlock_lens.align import GramStats, fit_alignment, fit_from_stats

    X, Y = PairedRows(D_SRC, D_TGT).dense(n)
    def floor() -> GramStats:
        return GramStats.from_dense(X, Y, chunk=CHUNK)

    fns = {"gram floor": floor}
    for m in METHODS:
        fns[f"streamed {m}"] = lambda m=m: fit_from_stats(floor(), m, RANK, m != "svd")
        fns[f"dense {m}"] = lambda m=m: fit_alignment(X, Y, method=m, rank=RANK, centered=m != "svd")
    t = interleaved(fns, repeats)
    print(f"-- n={n} d_src={D_SRC} d_tgt={D_TGT} k={RANK} chunk={CHUNK} repeats={repeats}")
    for name, xs in t.items():
        print(f"   {name:<22} {spread(xs)}")
    base = med(t["gram floor"])
    for m in METHODS:
        print(ratio_line(f"streamed {m} / gram floor", med(t[f"streamed {m}"]), base, "(target <= 3x)"))
        print(ratio_line(f"dense {m} / gram floor", med(t[f"dense {m}"]), base))
    stats = floor()
    for m in METHODS:
        W_s = fit_from_stats(stats, m, RANK, m != "svd").weight
        W_d = fit_alignment(X, Y, method=m, rank=RANK, centered=m != "svd").weight
        line = f"   {m}: ||W_streamed - W_dense|| / ||W_dense|| = {rel_diff(W_s, W_d):.1e}"
        ref = reference_f64(m, X, Y)
        if ref is not None:
            line += (f"; against W on float64 rows: streamed {rel_diff(W_s, ref):.1e}, "
                     f"dense {rel_diff(W_d, ref):.1e}")
        print(line)
    return {k: med(v) for k, v in t.items()}


def worker(args: argparse.Namespace) -> None:
    """One memory point: a streamed or dense svd fit of ``args.n`` generated rows."""
    from unlock_lens.align import GramStats, fit_alignment, fit_from_stats

    rows = PairedRows(D_SRC, D_TGT)
    t0 = time.perf_counter()
    with RssPeak() as rss:
        if args.mode == "streamed":
            stats = GramStats.empty(D_SRC, D_TGT)
            for X, Y in rows.chunks(args.n):
                stats.update(X, Y)
            fitted = fit_from_stats(stats, "svd", RANK)
        else:
            X, Y = rows.dense(args.n)
            fitted = fit_alignment(X, Y, method="svd", rank=RANK)
    print(json.dumps({"peak_mb": rss.delta_mb, "seconds": time.perf_counter() - t0,
                      "train_r2": fitted.metrics["train_r2"],
                      "rows_mb": args.n * (D_SRC + D_TGT) * 4 / 2**20}))


def memory(sizes: list[int], threads: int | None) -> None:
    print(f"-- peak RSS above the post-import level, svd k={RANK}, one fresh process per point")
    extra = ["--threads", str(threads)] if threads else []
    res = {}
    for n in sizes:
        for mode in ("streamed", "dense"):
            r = run_worker("benchmarks.bench_gram_fits", ["--mode", mode, "--n", str(n), *extra])
            res[mode, n] = r
            print(f"   {mode:<8} n={n:7d}: peak +{r['peak_mb']:8.1f} MiB in {r['seconds']:6.1f} s "
                  f"(float32 rows would be {r['rows_mb']:.0f} MiB; train R^2 {r['train_r2']:.4f})")
    lo, hi = sizes[0], sizes[-1]
    for mode in ("streamed", "dense"):
        grow = res[mode, hi]["peak_mb"] - res[mode, lo]["peak_mb"]
        print(f"   {mode}: peak grows {grow:+.1f} MiB from n={lo} to n={hi} "
              f"({grow / (hi - lo) * 1000:+.2f} MiB per 1000 rows)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="n=4096 timings, memory at 4096 / 16384")
    p.add_argument("--sizes", type=int, nargs="*", default=None,
                   help="row counts to time (none: skip the timings)")
    p.add_argument("--mem-sizes", type=int, nargs="*", default=None,
                   help="row counts for the memory points (none: skip them)")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (see bench_alignment)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", choices=("streamed", "dense"), help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        return worker(args)
    sizes = args.sizes if args.sizes is not None else [4096] if args.quick else [4096, 16384]
    mem_sizes = (args.mem_sizes if args.mem_sizes is not None
                 else [4096, 16384] if args.quick else [4096, 65536])
    repeats = args.repeats or (2 if args.quick else 3)
    header("bench_gram_fits")
    for n in sizes:
        time_size(n, repeats)
    if mem_sizes:
        memory(mem_sizes, args.threads)


if __name__ == "__main__":
    main()
