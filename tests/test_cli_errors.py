"""Bad command lines: exit code 2, one line naming the problem and the flag that fixes it, no
model loaded, nothing written. A bug (any other exception) keeps its traceback."""

from __future__ import annotations

import pytest

from unlock_lens import cli

OUT = "OUT"  # replaced by a path in the test's folder

ALIGN = ["align", "--key", "OUT/k.safetensors", "--source", "s", "--target", "t", "--out", "OUT/p.safetensors"]
EXTRACT = ["extract", "--model", "m", "--out", "OUT/k.safetensors"]
GENERATE = ["generate", "--target", "t", "--out", "OUT/g.jsonl"]
EVAL = ["eval", "--pack", "OUT/p.safetensors", "--target", "t", "--out", "OUT/e"]
EXPORT = ["export", "--pack", "OUT/p.safetensors", "--format", "gguf", "--out", "OUT/x.gguf"]
RUN = ["run", "--out", "OUT/run"]
TRANSFER = ["transfer-report", "--source", "s", "--target", "t", "--out", "OUT/tr"]
OFFLINE = {"HF_HUB_OFFLINE": "1"}

#: case -> (argv, what the one line must name[, environment])
CASES = {
    "align rank above n": (ALIGN + ["--rank", "1000", "--data", "last"], "--rank"),
    "align unknown data": (ALIGN + ["--data", "lines"], "--data"),
    "align zero pairs": (ALIGN + ["--max-pairs", "0"], "--max-pairs"),
    "align unknown method": (ALIGN + ["--method", "svdd"], "--method"),
    "align unknown normalisation": (ALIGN + ["--normalisation", "twist"], "--normalisation"),
    "align unknown positions": (ALIGN + ["--positions", "middle"], "--positions"),
    "align out is a folder": (ALIGN[:-1] + ["OUT"], "--out"),
    "align missing key file": (["align", "--key", "OUT/none.safetensors", "--source", "s", "--target",
                                "t", "--out", "OUT/p.safetensors"], "--key"),
    "align split the dataset lacks": (ALIGN + ["--dataset", "svamp", "--split", "train"], "--split"),
    "align zero batch": (ALIGN + ["--batch-size", "0"], "--batch-size"),
    "align unknown target format": (ALIGN + ["--target-format", "haiku"], "--target-format"),
    "align nan alpha": (ALIGN + ["--alpha", "nan"], "--alpha"),
    "extract unknown dataset": (EXTRACT + ["--dataset", "nosuchset"], "--dataset"),
    "extract unknown split": (EXTRACT + ["--split", "validation"], "--split"),
    "extract unknown aggregator": (EXTRACT + ["--aggregator", "median"], "--aggregator"),
    "extract zero batch": (EXTRACT + ["--batch-size", "0"], "--batch-size"),
    "extract zero questions": (EXTRACT + ["--n", "0"], "--n"),
    "extract unknown locked format": (EXTRACT + ["--locked-format", "haiku"], "--locked-format"),
    "extract unknown unlocked format": (EXTRACT + ["--unlocked-format", "haiku"], "--unlocked-format"),
    "extract cuda without a gpu": (EXTRACT + ["--device", "cuda"], "--device"),
    "extract unknown device": (EXTRACT + ["--device", "tpu"], "--device"),
    "extract unknown model offline": (EXTRACT[:2] + ["someone/no-such-model"] + EXTRACT[3:], "--model",
                                      OFFLINE),
    "extract unknown model, hub unreachable": (EXTRACT[:2] + ["someone/no-such-model"] + EXTRACT[3:],
                                               "--model"),
    "extract unknown unlocked model offline": (EXTRACT + ["--unlocked-model", "someone/nope"],
                                               "--model", OFFLINE),
    "extract model folder without config": (EXTRACT[:2] + ["OUT"] + EXTRACT[3:], "--model"),
    "extract missing gguf file": (EXTRACT[:2] + ["OUT/none.gguf"] + EXTRACT[3:], "--model"),
    "steer empty question": (["steer", "--pack", "OUT/p.safetensors", "--target", "t", "--question", ""],
                             "--question"),
    "steer missing pack": (["steer", "--pack", "OUT/none.safetensors", "--target", "t", "--question",
                            "x"], "--pack"),
    "steer zero tokens": (["steer", "--pack", "OUT/p.safetensors", "--target", "t", "--question", "x",
                           "--max-new-tokens", "0"], "--max-new-tokens"),
    "generate out is a folder": (["generate", "--target", "t", "--out", "OUT"], "--out"),
    "generate unknown dataset": (GENERATE + ["--dataset", "nosuchset"], "--dataset"),
    "generate split the dataset lacks": (GENERATE + ["--split", "train"], "--split"),
    "generate unknown prompt format": (GENERATE + ["--prompt-format", "haiku"], "--prompt-format"),
    "generate zero tokens": (GENERATE + ["--max-new-tokens", "0"], "--max-new-tokens"),
    "generate zero batch": (GENERATE + ["--batch-size", "0"], "--batch-size"),
    "generate missing pack": (GENERATE + ["--pack", "OUT/none.safetensors"], "--pack"),
    "generate unknown target offline": (["generate", "--target", "someone/nope", "--out", "OUT/g.jsonl"],
                                        "--target", OFFLINE),
    "eval unknown condition": (EVAL + ["--conditions", "direct,telepathy"], "--conditions"),
    "eval no condition": (EVAL + ["--conditions", ","], "--conditions"),
    "eval nan alpha": (EVAL + ["--alphas", "nan"], "--alphas"),
    "eval empty alphas": (EVAL + ["--alphas", ""], "--alphas"),
    "eval words for alphas": (EVAL + ["--alphas", "low,high"], "--alphas"),
    "eval fractional seed": (EVAL + ["--seeds", "0.5"], "--seeds"),
    "eval empty seeds": (EVAL + ["--seeds", ""], "--seeds"),
    "eval split the dataset lacks": (EVAL + ["--split", "train"], "--split"),
    "eval zero batch": (EVAL + ["--batch-size", "0"], "--batch-size"),
    "eval zero tokens": (EVAL + ["--max-new-tokens", "0"], "--max-new-tokens"),
    "eval zero limit": (EVAL + ["--limit", "0"], "--limit"),
    "eval zero bootstrap": (EVAL + ["--n-boot", "0"], "--n-boot"),
    "eval unknown backend": (EVAL + ["--backend", "tpu"], "--backend"),
    "eval vllm loop stop": (EVAL + ["--backend", "vllm", "--stop-loops"], "--stop-loops"),
    "eval unknown prompt format": (EVAL + ["--prompt-format", "haiku"], "--prompt-format"),
    "eval missing pack": (["eval", "--pack", "OUT/none.safetensors", "--target", "t", "--out", "OUT/e"],
                          "--pack"),
    "eval missing data path": (EVAL + ["--data-path", "OUT/none.jsonl"], "--data-path"),
    "eval out is a file": (["eval", "--pack", "OUT/p.safetensors", "--target", "t", "--out",
                            "OUT/file.txt"], "--out"),
    "export unknown format": (["export", "--pack", "OUT/p.safetensors", "--format", "onnx", "--out",
                               "OUT/x"], "--format"),
    "export missing pack": (["export", "--pack", "OUT/none.safetensors", "--format", "gguf", "--out",
                             "OUT/x.gguf"], "--pack"),
    "export missing norms": (EXPORT + ["--norms", "OUT/none.json"], "--norms"),
    "export zero prompt length": (EXPORT + ["--prompt-length", "0"], "--prompt-length"),
    "export split the dataset lacks": (EXPORT + ["--target", "t", "--dataset", "svamp", "--split",
                                                 "train"], "--split"),
    "demo unknown organism": (["demo", "--target", "chain-xl", "--html", "OUT/d.html"], "--target"),
    "demo unknown method": (["demo", "--method", "svdd", "--html", "OUT/d.html"], "--method"),
    "demo negative random seeds": (["demo", "--n-random", "-1", "--html", "OUT/d.html"], "--n-random"),
    "demo zero rank": (["demo", "--rank", "0", "--html", "OUT/d.html"], "--rank"),
    "demo nan alpha": (["demo", "--alpha", "nan", "--html", "OUT/d.html"], "--alpha"),
    "demo html is a folder": (["demo", "--html", "OUT"], "--html"),
    "run rank above n": (RUN + ["--rank", "300", "--n-align", "256", "--data", "last"], "--rank"),
    "run unknown data": (RUN + ["--data", "words"], "--data"),
    "run zero rank": (RUN + ["--rank", "0"], "--rank"),
    "run zero nulls": (RUN + ["--n-nulls", "0"], "--n-nulls"),
    "run zero reference tokens": (RUN + ["--tokens", "0"], "--tokens"),
    "sweep negative fidelity tokens": (["sweep", "--out", "OUT/sw", "--fidelity-tokens", "-1"], "--fidelity-tokens"),
    "sweep zero vocab k": (["sweep", "--out", "OUT/sw", "--vocab-k", "0"], "--vocab-k"),
    "transfer-report unknown axis": (TRANSFER + ["--axes", "french,klingon"], "--axes"),
    "transfer-report axis twice": (TRANSFER + ["--axes", "french,french"], "--axes"),
    "transfer-report unknown data kind": (TRANSFER + ["--kinds", "tokens+words"], "--kinds"),
    "transfer-report zero nulls": (TRANSFER + ["--n-nulls", "0"], "--n-nulls"),
    "transfer-report zero random directions": (TRANSFER + ["--n-random", "0"], "--n-random"),
    "transfer-report too few random directions": (TRANSFER + ["--n-random", "5"], "--n-random"),
    "transfer-report more eval requests than the pool": (TRANSFER + ["--n-eval", "100000"], "--n-eval"),
    "transfer-report zero tokens": (TRANSFER + ["--tokens", "0"], "--tokens"),
    "transfer-report zero fidelity tokens": (TRANSFER + ["--fidelity-tokens", "0"], "--fidelity-tokens"),
    "transfer-report nan alpha": (TRANSFER + ["--alpha", "nan"], "--alpha"),
    "transfer-report alpha and dev alphas": (TRANSFER + ["--alpha", "0.1", "--dev-alphas", "0.1,0.2"], "--dev-alphas"),
    "transfer-report nan dev alpha": (TRANSFER + ["--dev-alphas", "0.1,nan"], "--dev-alphas"),
    "transfer-report one model twice": (["transfer-report", "--source", "m", "--target", "m", "--out", "OUT/tr"],
                                        "--source"),
    "transfer-report zero threads": (TRANSFER + ["--threads", "0"], "--threads"),
    "transfer-report out is a file": (TRANSFER[:-1] + ["OUT/file.txt"], "--out"),
    "transfer-report unknown source offline": (["transfer-report", "--source", "someone/nope", "--target", "t",
                                                "--out", "OUT/tr"], "--source", OFFLINE),
    "transfer-report cuda without a gpu": (TRANSFER + ["--device", "cuda"], "--device"),
    "run empty alphas": (RUN + ["--alphas", ""], "--alphas"),
    "run nan alpha": (RUN + ["--alphas", "0.05,nan"], "--alphas"),
    "run zero eval questions": (RUN + ["--n-eval", "0"], "--n-eval"),
    "run cuda without a gpu": (RUN + ["--device", "cuda"], "--device"),
    "run second gpu": (RUN + ["--device", "cuda:7"], "--device"),
    "run unknown source offline": (RUN + ["--source", "someone/nope"], "--source", OFFLINE),
    "run unknown target, hub unreachable": (RUN + ["--target", "someone/nope"], "--target"),
    "reproduce unknown backend": (["reproduce", "qwen1.5-14b-to-7b-cot", "--backend", "tpu", "--out",
                                   "OUT/r"], "--backend"),
    "reproduce hub model offline": (["reproduce", "qwen1.5-14b-to-7b-cot", "--out", "OUT/r"], "--model",
                                    OFFLINE),
    "reproduce missing substitute": (["reproduce", "qwen1.5-14b-to-7b-cot", "--model",
                                      "Qwen/Qwen1.5-14B=OUT/none", "--out", "OUT/r"], "--model"),
    "reproduce cuda without a gpu": (["reproduce", "qwen1.5-14b-to-7b-cot", "--device", "cuda",
                                      "--out", "OUT/r"], "--device"),
}


@pytest.fixture()
def no_model(monkeypatch):
    """Loading a model, or reading a dataset, fails the test; this machine has no GPU and no hub."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model or dataset was loaded before the arguments were checked")

    monkeypatch.setattr(cli, "_load", refuse)
    monkeypatch.setattr(cli, "_questions", refuse)
    monkeypatch.setattr("unlock_lens.evaluate.datasets.load_dataset", refuse)
    monkeypatch.setattr("unlock_lens.organisms.registry.load_organism", refuse)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    monkeypatch.setattr("unlock_lens.models.hub_reachable", lambda timeout=3.0: False)
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_exit_2_before_any_model(case, tmp_path, capsys, monkeypatch, no_model):
    argv, flag, *env = CASES[case]
    for var, value in (env[0] if env else {}).items():
        monkeypatch.setenv(var, value)
    argv = [a.replace(OUT, str(tmp_path)) for a in argv]
    for name in ("file.txt", "k.safetensors", "p.safetensors"):  # inputs that exist (their content is never read)
        (tmp_path / name).write_text("a file, not a folder")
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert flag in err, err
    assert sorted(tmp_path.rglob("*")) == before  # nothing written


def test_negative_alpha_is_accepted_and_said(tmp_path):
    assert "removing the capability" in cli._alpha_note(-0.5)
    assert cli._alpha_note(0.1) == "alpha 0.1"


def test_rank_equal_to_n_warns_that_the_fit_interpolates(capsys):
    cli._check_fit("svd", 8, 8)
    assert "interpolates" in capsys.readouterr().err


def test_a_bug_keeps_its_traceback(monkeypatch, tiny_dirs, tmp_path):
    def boom(*args, **kwargs):
        raise RuntimeError("a real bug")

    monkeypatch.setattr(cli, "_load", boom)
    monkeypatch.setattr(cli, "_questions", lambda *args: ["What is 2 + 3?"])
    with pytest.raises(RuntimeError, match="a real bug"):
        cli.main(["extract", "--model", str(tiny_dirs["qwen2"]), "--out", str(tmp_path / "k.safetensors")])


def test_usage_errors_keep_clicks_exit_code(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["align", "--no-such-flag"])
    assert exit_info.value.code == 2 and "No such option" in capsys.readouterr().err


def test_help_texts_render_clean_and_describe_the_options():
    """--help shows no raw markup, no `<bool>` label on flags, the vllm extra in full, and a
    description for every option a user has to understand."""
    import click
    import typer.main
    from typer.testing import CliRunner

    from unlock_lens.cli import app

    command = typer.main.get_command(app)
    must_explain = {"n", "rank", "alpha", "normalisation", "positions", "aggregator", "capability",
                    "locked_format", "method"}
    for name, sub in command.commands.items():
        text = CliRunner().invoke(app, [name, "--help"], terminal_width=200).output
        assert "``" not in text and "\\[" not in text and "<bool>" not in text, name
        for param in sub.params:
            if isinstance(param, click.Option) and param.name in must_explain:
                assert param.help, f"{name} --{param.name} has no description"
    assert "unlock-lens[vllm]" in CliRunner().invoke(app, ["eval", "--help"], terminal_width=200).output
    method_help = next(p.help for p in command.commands["align"].params if p.name == "method")
    assert all(m in method_help for m in ("svd", "procrustes", "cca", "ridge"))


def test_version_and_help_for_every_option_with_its_choices():
    import click
    import typer.main
    from typer.testing import CliRunner

    from unlock_lens.artifacts import library_version
    from unlock_lens.cli import app
    from unlock_lens.evaluate.datasets import DATASETS
    from unlock_lens.prompts import FORMATS

    r = CliRunner().invoke(app, ["--version"])
    assert r.exit_code == 0 and r.output.strip() == f"unlock-lens {library_version()}"
    command = typer.main.get_command(app)
    for name, sub in command.commands.items():
        for param in sub.params:
            assert param.help, f"{name} {param.opts[0]} has no help text"
            help_text = " ".join(param.help.split())
            option = param.name
            if option == "dataset":
                assert all(d in help_text for d in DATASETS), (name, help_text)
            if option == "split":
                assert all(f"{d}: " in help_text for d in DATASETS) and "train" in help_text
            if option.endswith("format") and isinstance(param, click.Option) and option != "format":
                assert all(f in help_text for f in FORMATS), (name, option, help_text)
            if option == "aggregator":
                assert "mean" in help_text and "pca" in help_text
            if option == "device":
                assert all(d in help_text for d in ("cpu", "cuda", "mps")), (name, help_text)
