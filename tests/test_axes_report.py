"""The per-axis transfer measurements and ``unlock-lens transfer-report`` on tiny random models."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
from typer.testing import CliRunner

from unlock_lens import cli
from unlock_lens.axes import load_axes, neutral_requests
from unlock_lens.axes_report.run import QUICK_SIZES, ReportSettings, run_transfer_report
from unlock_lens.diagnostics.axes_transfer import (
    NATIVE_EFFECT_LEVEL,
    TransferSizes,
    measure_axis,
    median_fidelity,
    prepare_direction,
)
from unlock_lens.errors import UnlockLensError

SIZES = TransferSizes(n_key=6, n_align=16, n_eval=4, n_nulls=4, n_random=9, max_new_tokens=6)


def _direction(source, target, axes, kinds=("tokens+last",), alpha=0.5):
    return prepare_direction(source, target, axes, alpha=alpha, sizes=SIZES, kinds=kinds)


def test_a_model_mapped_onto_itself_transfers_its_own_key_exactly(tiny_models):
    """Source = target: the full-rank maps fitted on the same states are the identity, so the
    transferred key is the native key: cosine 1, F = 1 with a tight interval, the same greedy
    outputs (behaviour share 1 wherever the native key moves the score)."""
    model = tiny_models["qwen2"]
    axis = load_axes()["shouting"]
    record = measure_axis(_direction(model, model, [axis]), axis)
    kind = record["kinds"]["tokens+last"]
    assert kind["cosine_to_native"] == pytest.approx(1.0, abs=1e-4)
    assert kind["F"] == pytest.approx(1.0, abs=1e-3)
    assert kind["F_lo"] == pytest.approx(1.0, abs=1e-3) and kind["F_hi"] == pytest.approx(1.0, abs=1e-3)
    assert kind["effect"] == pytest.approx(record["native"]["effect"], abs=1e-9)
    assert record["example"]["transferred (tokens+last)"] == record["example"]["native"]


def test_the_shared_conditions_are_generated_once_per_direction(tiny_models):
    """Unsteered outputs and the random target directions (rotate ignores a direction's length,
    so every axis draws the same ones) are generated once for all axes of a direction."""
    axes = [load_axes()[a] for a in ("french", "brief")]
    direction = _direction(tiny_models["qwen2"], tiny_models["llama"], axes)
    measure_axis(direction, axes[0])
    after_one = len(direction._outputs)
    measure_axis(direction, axes[1])
    # per axis: the unlocked prompt, the transferred key and the random-mapped control are new
    # (the native reference comes from greedy_reference, not from this memo)
    assert after_one == 1 + SIZES.n_random + 3
    assert len(direction._outputs) == after_one + 3


def _record(has: bool, f: float) -> dict:
    return {"native": {"has_effect": has}, "kinds": {"last": {"F": f}}}


def test_median_fidelity_leaves_out_axes_without_a_native_effect():
    records = [_record(True, 0.2), _record(False, 5.0), _record(True, 0.6), _record(True, 0.4)]
    assert median_fidelity(records, "last") == (pytest.approx(0.4), 3)
    median, n = median_fidelity([_record(False, 1.0)], "last")
    assert math.isnan(median) and n == 0
    assert NATIVE_EFFECT_LEVEL == 0.1


def test_sizes_are_checked_against_the_pool():
    with pytest.raises(UnlockLensError, match="--n-eval 100000"):
        TransferSizes(n_eval=100000).check({"eval": len(neutral_requests("eval"))})
    with pytest.raises(UnlockLensError, match="--tokens"):
        TransferSizes(max_new_tokens=0).check()
    with pytest.raises(UnlockLensError, match="--n-random 5: with fewer than 9"):
        TransferSizes(n_random=5).check()  # p could never reach 0.1: every axis 'no native effect'


def test_transfer_report_quick_end_to_end_then_resumes(tiny_dirs, tmp_path):
    """``--quick`` on two tiny models writes the three files; a run cut after some axes
    resumes with only the missing ones and gives the same numbers; a finished folder
    reloads no model; other settings in the same folder are refused."""
    out = tmp_path / "rep"
    argv = ["transfer-report", "--source", str(tiny_dirs["qwen2"]), "--target", str(tiny_dirs["llama"]),
            "--quick", "--axes", "french,shouting,brief", "--alpha", "0.5", "--kinds", "tokens+last,contrasts,last",
            "--out", str(out)]
    result = CliRunner().invoke(cli.app, argv)
    assert result.exit_code == 0, result.output
    assert "qwen2 -> llama, contrasts: median F" in result.output
    records = [json.loads(line) for line in (out / "axes.jsonl").read_text().splitlines()]
    assert [(r["direction"].split(" -> ")[0], r["axis"]) for r in records] == [
        (model, axis) for model in ("qwen2", "llama") for axis in ("french", "shouting", "brief")]
    summary = json.loads((out / "report.json").read_text())
    kinds = {"tokens+last", "contrasts", "last"}
    assert len(summary["records"]) == 6 and {m["kind"] for m in summary["medians"]} == kinds
    table = (out / "report.csv").read_text().splitlines()
    assert len(table) == 1 + 6 * 3  # a row per direction x axis x data kind
    html = (out / "report.html").read_text()
    assert "plotly" in html and "Likelihood fidelity F" in html and "shouting" in html
    assert all(r["kinds"]["last"]["n_nulls"] == 5 and r["native"]["n_random"] == 9 for r in records)

    # an interruption: the last two records lost, half a line written
    lines = (out / "axes.jsonl").read_text().splitlines()
    (out / "axes.jsonl").write_text("\n".join(lines[:4]) + "\n" + lines[4][:40])
    loads = []
    settings = ReportSettings(str(tiny_dirs["qwen2"]), str(tiny_dirs["llama"]), ("french", "shouting", "brief"),
                              kinds=("tokens+last", "contrasts", "last"), sizes=QUICK_SIZES, alpha=0.5)

    def loader(name):
        from unlock_lens.models import load_model

        loads.append(name)
        return load_model(name)

    run_transfer_report(settings, out, loader=loader, progress=False)
    resumed = [json.loads(line) for line in (out / "axes.jsonl").read_text().splitlines()]
    assert len(loads) == 2 and len(resumed) == 6
    assert resumed[:4] == records[:4]
    for redone, original in zip(resumed[4:], records[4:], strict=True):  # the same numbers again
        for kind in kinds:
            assert redone["kinds"][kind]["F"] == pytest.approx(original["kinds"][kind]["F"], rel=1e-6)
        assert redone["example"] == original["example"]

    def refuse(name):
        raise AssertionError("a finished report loaded a model")

    run_transfer_report(settings, out, loader=refuse, progress=False)
    with pytest.raises(UnlockLensError, match="other settings"):
        run_transfer_report(replace(settings, alpha=0.25), out, loader=refuse, progress=False)


def test_contrasts_maps_leave_the_measured_axis_out(tiny_models):
    """A ``contrasts`` kind is fitted per axis on the other axes' (source key, native key) pairs:
    n_axes - 1 rows each, never the held-out axis's own keys (which the fit would reproduce)."""
    axes = [load_axes()[a] for a in ("french", "brief", "pirate")]
    direction = _direction(tiny_models["qwen2"], tiny_models["llama"], axes)
    direction.kinds = ("contrasts", "tokens+last+contrasts")
    for kind in direction.kinds:
        maps = {a.name: direction.maps_for(a, kind) for a in axes}
        assert all(m.metrics["contrast_rows"] == 2 for per in maps.values() for m in per.values())
        french = next(iter(maps["french"]))
        assert not maps["french"][french].weight.equal(maps["brief"][french].weight)
    assert direction.maps_for(axes[0], "contrasts") is direction.maps_for(axes[0], "contrasts")  # fitted once


def test_the_contrasts_rank_clamp_is_said_once_per_direction(tiny_models):
    """Alone, ``contrasts`` has n_axes - 1 rows for every axis, so the rank clamp is the same
    news each time: one warning per direction, not one per axis."""
    axes = [load_axes()[a] for a in ("french", "brief", "pirate")]
    direction = _direction(tiny_models["qwen2"], tiny_models["llama"], axes)
    with pytest.warns(UserWarning, match=r"key pairs \(contrasts alone\): clamped to 2") as caught:
        for axis in axes:
            direction.maps_for(axis, "contrasts")
    assert sum("contrasts alone" in str(w.message) for w in caught) == 1


def test_alpha_chosen_on_dev_requests_never_reads_eval(tiny_models):
    """With dev alphas each axis's alpha is the one with the largest native behaviour effect on
    the dev requests; no evaluation request is generated from before the choice is made."""
    axis = load_axes()["shouting"]
    direction = _direction(tiny_models["qwen2"], tiny_models["llama"], [axis])
    direction.dev_requests = neutral_requests("dev")[:4]
    direction.dev_alphas = (0.25, 2.0)
    seen = []
    outputs = direction.outputs

    def spy(name, prompts, steering=None):
        seen.append((name, list(prompts)))
        return outputs(name, prompts, steering)

    direction.outputs = spy
    alpha, how = direction.alpha_for(axis)
    evaluated = neutral_requests("eval")[: SIZES.n_eval]
    assert seen and not any(q in p for _, prompts in seen for p in prompts for q in evaluated)
    effects = {float(a): e for a, e in how["dev_effects"].items()}
    assert how["alpha_from"] == "dev" and set(effects) == {0.25, 2.0}
    assert alpha == max(effects, key=lambda a: (effects[a], -a))
    record = measure_axis(direction, axis)
    assert record["alpha"] == alpha and record["alpha_from"] == "dev"


def test_a_native_key_that_ends_every_output_has_no_native_effect(tiny_models, monkeypatch):
    """No native continuation to score (greedy_reference refuses): the axis reads 'no native
    effect', F is NaN for every kind, and the record is still written."""
    from unlock_lens.diagnostics import axes_transfer

    def empty(*args, **kwargs):
        raise UnlockLensError("every 'native' continuation is empty")

    monkeypatch.setattr(axes_transfer, "greedy_reference", empty)
    axis = load_axes()["french"]
    record = measure_axis(_direction(tiny_models["qwen2"], tiny_models["llama"], [axis]), axis)
    assert record["n_reference"] == 0 and record["native"]["has_effect"] is False
    assert math.isnan(record["kinds"]["tokens+last"]["F"]) and record["example"]["native"] == ""


def test_the_cli_help_names_the_default_kinds_the_api_uses():
    from unlock_lens.axes_report.run import DEFAULT_KINDS, ReportSettings

    result = CliRunner().invoke(cli.app, ["transfer-report", "--help"], terminal_width=400)
    assert f"[default: {','.join(DEFAULT_KINDS)}]" in " ".join(result.output.split())
    assert ReportSettings("a", "b").kinds == DEFAULT_KINDS == ("tokens+last", "contrasts")
