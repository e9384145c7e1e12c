"""Alignment fit time: ``fit_alignment`` (svd) at n=512, d_s=2048, d_t=4096, k in {8, 64}.

Also times the op that dominates (the full thin SVD in ``top_right_singular_vectors``)
against two drop-in alternatives for n << d: the Gram-matrix trick (eigh of ``X X^T``,
n x n, then ``V = X^T U / S``) and ``torch.svd_lowrank``; reports their agreement with the
full SVD (principal-angle cosine of the top-k subspace) so a swap can be judged.

    python -m benchmarks.bench_alignment [--quick]
"""

from __future__ import annotations

import argparse

import torch

from benchmarks._common import header, interleaved, med, ratio_line, spread


def activations(n: int, d: int, seed: int) -> torch.Tensor:
    """Activation-like rows: a strong mean, a decaying spectrum, noise (float32)."""
    g = torch.Generator().manual_seed(seed)
    spec = 1.0 / torch.arange(1, n + 1, dtype=torch.float32).sqrt()
    U = torch.linalg.qr(torch.randn(n, n, generator=g))[0]
    V = torch.linalg.qr(torch.randn(d, n, generator=g))[0]
    return (U * spec) @ V.T * 30 + torch.randn(d, generator=g) * 5


def svd_full(X: torch.Tensor, k: int) -> torch.Tensor:
    return torch.linalg.svd(X, full_matrices=False)[2][:k].T


def svd_gram(X: torch.Tensor, k: int) -> torch.Tensor:
    """Top-k right singular vectors via eigh of the n x n Gram matrix (float64 for accuracy)."""
    G = (X.double() @ X.double().T)
    evals, U = torch.linalg.eigh(G)
    evals, U = evals.flip(0)[:k], U.flip(1)[:, :k]
    S = evals.clamp_min(0).sqrt()
    return ((X.double().T @ U) / S.clamp_min(1e-30)).float()


def svd_lowrank(X: torch.Tensor, k: int) -> torch.Tensor:
    return torch.svd_lowrank(X, q=min(k + 10, min(X.shape)), niter=4)[2][:, :k]


def subspace_cos(A: torch.Tensor, B: torch.Tensor) -> float:
    """Smallest principal-angle cosine between the column spans of A and B (1 = same span)."""
    qa, qb = torch.linalg.qr(A.double())[0], torch.linalg.qr(B.double())[0]
    return float(torch.linalg.svdvals(qa.T @ qb).min())


def main() -> None:
    from unlock_lens.align import fit_alignment

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--n", type=int, default=512)
    p.add_argument("--d-src", type=int, default=2048)
    p.add_argument("--d-tgt", type=int, default=4096)
    p.add_argument("--ranks", type=int, nargs="+", default=[8, 64])
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (on a shared machine MKL's LAPACK with >1 thread "
                        "can slow down 100x from oversubscription: compare --threads 1)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = args.repeats or (3 if args.quick else 7)
    header("bench_alignment")
    Xs = activations(args.n, args.d_src, 0)
    Xt = activations(args.n, args.d_tgt, 1)
    print(f"   n={args.n} d_src={args.d_src} d_tgt={args.d_tgt} repeats={repeats}")
    for k in args.ranks:
        fns = {
            "fit_alignment(svd)": lambda k=k: fit_alignment(Xs, Xt, method="svd", rank=k),
            "full svd X_t": lambda k=k: svd_full(Xt, k),
            "gram eigh X_t": lambda k=k: svd_gram(Xt, k),
            "svd_lowrank X_t": lambda k=k: svd_lowrank(Xt, k),
        }
        t = interleaved(fns, repeats)
        fit = med(t["fit_alignment(svd)"])
        print(f"-- k={k}: fit_alignment {spread(t['fit_alignment(svd)'])} "
              f"({'meets' if fit < 1 else 'MISSES'} target < 1 s)")
        for name in list(fns)[1:]:
            print(f"   {name:<18} {spread(t[name])}")
        ref = svd_full(Xt, k)
        for name, fn in (("gram eigh", svd_gram), ("svd_lowrank", svd_lowrank)):
            print(f"   {name} vs full svd: min subspace cosine {subspace_cos(ref, fn(Xt, k)):.6f}")
        print(ratio_line("speed-up gram eigh / full svd (X_t)", med(t["full svd X_t"]),
                         med(t["gram eigh X_t"])))
        print(ratio_line("speed-up svd_lowrank / full svd (X_t)", med(t["full svd X_t"]),
                         med(t["svd_lowrank X_t"])))
    # where fit time goes (one k): profile the fit
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fit_alignment(Xs, Xt, method="svd", rank=args.ranks[-1])
    print(f"-- profile of fit_alignment(k={args.ranks[-1]}), top ops by self CPU time:")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8))


if __name__ == "__main__":
    main()
