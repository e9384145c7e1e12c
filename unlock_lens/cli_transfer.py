"""``unlock-lens transfer-report``: every behaviour axis, both directions of a model pair
(:mod:`unlock_lens.axes_report`). Added to :data:`unlock_lens.cli.app` through
``COMMAND_MODULES``; every argument is checked before a model loads."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from unlock_lens import cli_checks as check
from unlock_lens.cli import BatchSize, Device, _check_models, _load, app


def _names(text: str, flag: str) -> tuple[str, ...]:
    names = tuple(x.strip() for x in text.split(",") if x.strip())
    if not names:
        from unlock_lens.errors import UnlockLensError

        raise UnlockLensError(f"{flag} is empty: give at least one name, e.g. {flag} french,positive")
    return names


@app.command("transfer-report")
def transfer_report(
    source: Annotated[str, typer.Option(help="one model of the pair (hub id, local HF dir, .gguf or registry name)")],
    target: Annotated[str, typer.Option(help="the other model; both directions are measured")],
    axes: Annotated[str | None, typer.Option(help="comma list of axes from the registry (default: all)")] = None,
    kinds: Annotated[str | None, typer.Option(help="alignment data kinds, comma list: tokens+last, last, tokens, "
                                              "text, contrasts (each axis's maps fitted on the other axes' keys; "
                                              "alone or +-joined, e.g. tokens+last+contrasts) [default: "
                                              "tokens+last,contrasts]")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="small sizes for tiny models or a smoke test "
                                        "(8 key, 16 align, 4 eval requests, 5 nulls, 9 random directions, "
                                        "8 tokens, 4 scored for F); explicit size flags still win")] = False,
    out: Annotated[Path, typer.Option(help="output folder (axes.jsonl, report.csv/json/html); a rerun with "
                                      "the same settings resumes")] = Path("out/transfer-report"),
    n_eval: Annotated[int | None, typer.Option(help="evaluation requests per axis (default 8)")] = None,
    n_nulls: Annotated[int | None, typer.Option(help="random-mapped null directions for F (default 30)")] = None,
    n_random: Annotated[int | None, typer.Option(help="random target directions, the native key's null "
                                                 "(default 10; at least 9)")] = None,
    n_key: Annotated[int | None, typer.Option(help="key requests per axis and model (default 32)")] = None,
    n_align: Annotated[int | None, typer.Option(help="trigger-free alignment requests (default 64)")] = None,
    tokens: Annotated[int | None, typer.Option(help="greedy tokens per output, behaviour scored on them (default 16)")]
    = None,
    fidelity_tokens: Annotated[int | None, typer.Option(help="first tokens of the native key's continuations "
                                                        "scored for F (default 4)")] = None,
    alpha: Annotated[float | None, typer.Option(help="steering strength for every axis (default: the "
                                                "library protocol's)")] = None,
    dev_alphas: Annotated[str | None, typer.Option(help="choose each axis's alpha among these (comma list) by "
                                                  "the native key's behaviour effect on the pool's dev requests; "
                                                  "instead of --alpha")] = None,
    seed: Annotated[int, typer.Option(help="seed of the null and random directions")] = 0,
    batch_size: BatchSize = 16,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads (default: torch's)")] = None,
    device: Device = "cpu",
) -> None:
    """Per behaviour axis and direction: the native key's effect against random target
    directions, the transferred key's likelihood fidelity F [CI] and direction-level p per
    alignment data kind, its behaviour share, anti-steerable fraction, the prompting baseline and
    a random-mapped control; resumable; writes report.html, report.json and report.csv."""
    from unlock_lens.axes_report.run import (
        DEFAULT_KINDS,
        QUICK_SIZES,
        ReportSettings,
        check_settings,
        run_transfer_report,
    )
    from unlock_lens.diagnostics.axes_transfer import TransferSizes

    sizes = QUICK_SIZES if quick else TransferSizes()
    given = {"n_eval": n_eval, "n_nulls": n_nulls, "n_random": n_random, "n_key": n_key, "n_align": n_align,
             "max_new_tokens": tokens,
             "fidelity_tokens": fidelity_tokens}
    sizes = replace(sizes, seed=seed, batch_size=batch_size, **{k: v for k, v in given.items() if v is not None})
    settings = ReportSettings(source, target, _names(axes, "--axes") if axes is not None else (),
                              _names(kinds, "--kinds") if kinds is not None else DEFAULT_KINDS, sizes, alpha, device,
                              tuple(check.parse_alphas(dev_alphas, "--dev-alphas")) if dev_alphas is not None else ())
    check_settings(settings)
    check.check_positive(threads, "--threads")
    check.check_out_folder(out, "transfer-report")
    _check_models(device, source=source, target=target)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    table = run_transfer_report(settings, out, loader=lambda name: _load(name, device))
    for m in json.loads((out / "report.json").read_text())["medians"]:
        typer.echo(f"{m['direction']}, {m['kind']}: median F {m['median_F']:.2f} over the "
                   f"{m['axes_with_native_effect']} of {m['axes']} axes with a native effect")
    typer.echo(f"{len(table)} rows -> {out}/report.csv, {out}/report.json, report {out}/report.html")
