import json

import pytest
from typer.testing import CliRunner

from unlock_lens.cli import app
from unlock_lens.evaluate.datasets import default_data_dir
from unlock_lens.masterkey import MasterKey
from unlock_lens.pack import CapabilityPack

DATA_DIR = default_data_dir()

pytestmark = pytest.mark.skipif(DATA_DIR is None, reason="needs ../shared/data")
runner = CliRunner()


def test_extract_align_steer_generate(tiny_dirs, tmp_path, monkeypatch):
    monkeypatch.setenv("UNLOCK_LENS_DATA", str(DATA_DIR))
    src, tgt = str(tiny_dirs["qwen2"]), str(tiny_dirs["llama"])
    key_path, pack_path = tmp_path / "key.safetensors", tmp_path / "pack.safetensors"
    r = runner.invoke(app, ["extract", "--model", src, "--out", str(key_path), "--n", "8"])
    assert r.exit_code == 0, r.output
    key = MasterKey.load(key_path)
    assert key.n_prompts == 8 and key.directions.shape == (3, 64)
    r = runner.invoke(app, ["align", "--key", str(key_path), "--source", src, "--target", tgt,
                            "--out", str(pack_path), "--n", "12", "--rank", "4", "--alpha", "0.3"])
    assert r.exit_code == 0, r.output
    pack = CapabilityPack.load(pack_path)
    assert pack.alpha == 0.3 and len(pack.maps) == 3
    assert pack.alignment["prompt_hash"] != key.prompt_hash  # disjoint question sets
    r = runner.invoke(app, ["steer", "--pack", str(pack_path), "--target", tgt,
                            "--question", "What is 2 + 3?", "--max-new-tokens", "4"])
    assert r.exit_code == 0, r.output
    assert "--- steered (alpha 0.3)" in r.output
    out = tmp_path / "gen.jsonl"
    r = runner.invoke(app, ["generate", "--target", tgt, "--pack", str(pack_path), "--out", str(out),
                            "--dataset", "svamp", "--n", "3", "--max-new-tokens", "4"])
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["id"] for row in rows] == ["svamp-test-0000", "svamp-test-0001", "svamp-test-0002"]
    # a pack applied to the wrong model is refused with a clear message
    r = runner.invoke(app, ["steer", "--pack", str(pack_path), "--target", str(tiny_dirs["qwen2-deep"]),
                            "--question", "x"])
    assert r.exit_code != 0 and "made for" in str(r.exception)


def test_readme_export_examples_run(tiny_dirs, tmp_path, monkeypatch, capsys):
    """README's export lines: vLLM specs from an additive pack, GGUF with norms measured by --target;
    a rotate pack asked for vLLM specs is refused with the flag that fixes it."""
    from unlock_lens.cli import main

    monkeypatch.setenv("UNLOCK_LENS_DATA", str(DATA_DIR))
    src, tgt = str(tiny_dirs["qwen2"]), str(tiny_dirs["llama"])
    key = tmp_path / "key.safetensors"
    assert runner.invoke(app, ["extract", "--model", src, "--out", str(key), "--n", "8"]).exit_code == 0
    packs = {}
    for name, extra in {"unit": ["--normalisation", "unit", "--positions", "all"], "rotate": []}.items():
        packs[name] = tmp_path / f"pack_{name}.safetensors"
        r = runner.invoke(app, ["align", "--key", str(key), "--source", src, "--target", tgt, "--out",
                                str(packs[name]), "--n", "12", "--rank", "4", *extra])
        assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["export", "--pack", str(packs["unit"]), "--format", "vllm", "--out",
                            str(tmp_path / "cot.vllm.json")])
    assert r.exit_code == 0, r.output
    specs = json.loads((tmp_path / "cot.vllm.json").read_text())
    assert len(specs) >= 2
    r = runner.invoke(app, ["export", "--pack", str(packs["rotate"]), "--format", "gguf", "--out",
                            str(tmp_path / "cot.gguf"), "--target", tgt, "--n", "4"])
    assert r.exit_code == 0, r.output
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--pack", str(packs["rotate"]), "--format", "vllm", "--out", str(tmp_path / "x.json")])
    assert exit_info.value.code == 2 and "--normalisation unit" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_a_rank_n_fit_warns_and_reports_its_held_out_error(tiny_dirs, tmp_path, monkeypatch):
    import re

    monkeypatch.setenv("UNLOCK_LENS_DATA", str(DATA_DIR))
    src, tgt = str(tiny_dirs["qwen2"]), str(tiny_dirs["llama"])
    key = tmp_path / "key.safetensors"
    assert runner.invoke(app, ["extract", "--model", src, "--out", str(key), "--n", "4"]).exit_code == 0
    r = runner.invoke(app, ["align", "--key", str(key), "--source", src, "--target", tgt,
                            "--out", str(tmp_path / "p.safetensors"), "--n", "6", "--rank", "6", "--data", "last"])
    assert r.exit_code == 0, r.output
    assert "interpolates its 6 questions" in r.output and "on last data" in r.output
    train, held = map(float, re.search(r"train ([0-9.]+), held-out ([0-9.]+)", r.output).groups())
    assert train < 1e-3 and held > 0.05  # a perfect fit on its own questions, not elsewhere


def test_align_defaults_to_token_pairs_and_records_them(tiny_dirs, tmp_path, monkeypatch):
    """The default alignment data is tokens+last (README: which data); the rank defaults to 256,
    lowered to the models' width; the pack records both."""
    from unlock_lens.pack import CapabilityPack

    monkeypatch.setenv("UNLOCK_LENS_DATA", str(DATA_DIR))
    src, tgt = str(tiny_dirs["qwen2"]), str(tiny_dirs["llama"])
    key = tmp_path / "key.safetensors"
    assert runner.invoke(app, ["extract", "--model", src, "--out", str(key), "--n", "4"]).exit_code == 0
    r = runner.invoke(app, ["align", "--key", str(key), "--source", src, "--target", tgt,
                            "--out", str(tmp_path / "p.safetensors"), "--n", "6", "--max-pairs", "300"])
    assert r.exit_code == 0, r.output
    pack = CapabilityPack.load(tmp_path / "p.safetensors")
    assert (pack.alignment["data"], pack.alignment["max_pairs"]) == ("tokens+last", 300)
    width = min(min(m.weight.shape) for m in pack.maps.values())  # min(d_src, d_tgt)
    assert {m.rank for m in pack.maps.values()} == {width} and width < 256
    assert f"rank {width} on tokens+last data" in r.output


def test_eval_with_the_direct_condition_alone_runs_and_explains_its_table(tiny_dirs, tmp_path, monkeypatch):
    """`eval --conditions direct` needs no alpha (it used to index an empty alpha list); the
    summary is one direct row and the printed table ends with its legend."""
    import pandas as pd

    from unlock_lens.legends import TABLE_LEGENDS

    monkeypatch.setenv("UNLOCK_LENS_DATA", str(DATA_DIR))
    src, tgt = str(tiny_dirs["qwen2"]), str(tiny_dirs["llama"])
    key, pack = tmp_path / "key.safetensors", tmp_path / "pack.safetensors"
    assert runner.invoke(app, ["extract", "--model", src, "--out", str(key), "--n", "4"]).exit_code == 0
    r = runner.invoke(app, ["align", "--key", str(key), "--source", src, "--target", tgt, "--out",
                            str(pack), "--n", "6", "--rank", "4"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["eval", "--pack", str(pack), "--target", tgt, "--out", str(tmp_path / "e"),
                            "--conditions", "direct", "--limit", "3", "--max-new-tokens", "4"])
    assert r.exit_code == 0, r.output
    summary = pd.read_csv(tmp_path / "e" / "summary.csv")
    assert summary.condition.tolist() == ["direct"] and summary.n.tolist() == [3]
    assert TABLE_LEGENDS["eval"] in r.output



def test_run_prints_a_verdict_per_alpha_that_its_table_reproduces(tiny_dirs, tmp_path, monkeypatch):
    """`unlock-lens run` on tiny models: the verdict's rank and p follow from the full table it
    writes (the key's F against each of the 30 null directions' F), and the table it prints
    ends with its legend."""
    import pandas as pd

    from unlock_lens.legends import TABLE_LEGENDS

    monkeypatch.setenv("UNLOCK_LENS_DATA", str(DATA_DIR))
    out = tmp_path / "run"
    r = runner.invoke(app, ["run", "--source", str(tiny_dirs["qwen2"]), "--target", str(tiny_dirs["llama"]),
                            "--n-key", "4", "--n-align", "6", "--n-eval", "4", "--rank", "4",
                            "--data", "last", "--alphas", "0.5,0.1", "--tokens", "3", "--out", str(out)])
    assert r.exit_code == 0, r.output
    table = pd.read_csv(out / "fidelity.csv", keep_default_na=False, na_values=[""])
    verdicts = (out / "verdict.txt").read_text().splitlines()
    assert len(verdicts) == 2 and TABLE_LEGENDS["run"] in r.output
    for alpha, line in zip((0.5, 0.1), verdicts, strict=True):
        rows = table[table.alpha == alpha]
        key = rows[rows.condition == "transferred"].iloc[0]
        nulls = rows[rows.condition.str.startswith("random-mapped ")].F.to_numpy()
        assert len(nulls) == 30
        at_least = int((nulls >= key.F).sum())
        assert key.p == pytest.approx((1 + at_least) / 31)
        assert f"alpha {alpha:g}: transferred key F = {key.F:.2f}" in line
        assert f"above {30 - at_least} of 30 random-mapped directions (p = {key.p:.3f})" in line
        assert line in r.output
        verdict = "beyond the null directions" if key.p <= 0.05 else "not distinguishable"
        assert verdict in line
