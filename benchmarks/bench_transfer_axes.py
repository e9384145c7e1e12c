"""Time of `unlock-lens transfer-report` per stage, on one direction and a few axes, to project
the full report (both directions, every axis) at the default sizes.

Stages: load both models; each model's keys of the first three axes (one locked capture, one
unlocked capture per axis); the maps of the prompt-state kinds (``contrasts`` is fitted per axis
inside the measurement); then ``measure_axis`` on the first two axes (the first one also
generates the unsteered and random-target outputs every later axis of the direction shares).
Wall and CPU seconds per stage; on a shared machine, CPU seconds with one thread are the number
to project from.

    python -m benchmarks.bench_transfer_axes --source smollm2-135m-instruct --target gemma-3-270m
    python -m benchmarks.bench_transfer_axes --source gemma-3-270m --target smollm2-135m-instruct
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks._common import header, machine
from unlock_lens.axes import load_axes
from unlock_lens.axes_report.run import DEFAULT_KINDS
from unlock_lens.diagnostics.axes_transfer import (
    TransferSizes,
    axis_keys,
    measure_axis,
    pool_requests,
    prepare_direction,
)
from unlock_lens.models import load_model


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _since(start: tuple[float, float]) -> str:
    wall, cpu = _clock()
    return f"wall {wall - start[0]:.1f} s, cpu {cpu - start[1]:.1f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="smollm2-135m-instruct")
    parser.add_argument("--target", default="gemma-3-270m")
    parser.add_argument("--axes", default="french,shouting,brief", help="three axes: keys for all, the first two measured")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    header(f"transfer-report stages: {args.source} -> {args.target}")
    print(machine())
    sizes, kinds = TransferSizes(), DEFAULT_KINDS
    print(sizes, kinds)
    start = _clock()
    source, target = load_model(args.source), load_model(args.target)
    print("load both models:", _since(start))
    axes = [load_axes()[name] for name in args.axes.split(",")]
    keys = {}
    for name, model in ((args.source, source), (args.target, target)):
        start = _clock()
        keys[name] = axis_keys(model, axes, pool_requests(sizes)["key"], batch_size=sizes.batch_size)
        print(f"keys of {len(axes)} axes in {name} ({len(axes) + 1} captures):", _since(start))
    start = _clock()
    direction = prepare_direction(source, target, axes, alpha=0.1, sizes=sizes, kinds=kinds,
                                  source_keys=keys[args.source], target_keys=keys[args.target])
    print(f"maps ({', '.join(direction.maps)}):", _since(start))
    for axis in axes[:2]:
        start = _clock()
        record = measure_axis(direction, axis)
        print(f"measure_axis {axis.name}:", _since(start), "| F", {k: round(v["F"], 3) for k, v in record["kinds"].items()})


if __name__ == "__main__":
    main()
