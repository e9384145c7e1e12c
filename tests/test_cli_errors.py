"""Bad command lines: exit code 2, one line naming the problem and the flag that fixes it, no
model loaded, nothing written. A bug (any other exception) keeps its traceback."""

from __future__ import annotations

import pytest

from unlock_lens import cli

OUT = "OUT"  # replaced by a path in the test's folder

CASES = {
    "align rank above n": (["align", "--key", "k.safetensors", "--source", "s", "--target", "t",
                            "--out", "OUT/p.safetensors", "--rank", "1000", "--data", "last"], "--rank"),
    "align unknown data": (["align", "--key", "k.safetensors", "--source", "s", "--target", "t",
                            "--out", "OUT/p.safetensors", "--data", "lines"], "tokens+last"),
    "align zero pairs": (["align", "--key", "k.safetensors", "--source", "s", "--target", "t",
                          "--out", "OUT/p.safetensors", "--max-pairs", "0"], "--max-pairs"),
    "align unknown method": (["align", "--key", "k.safetensors", "--source", "s", "--target", "t",
                              "--out", "OUT/p.safetensors", "--method", "svdd"], "--method"),
    "align unknown normalisation": (["align", "--key", "k.safetensors", "--source", "s", "--target",
                                     "t", "--out", "OUT/p.safetensors", "--normalisation", "twist"],
                                    "--normalisation"),
    "align unknown positions": (["align", "--key", "k.safetensors", "--source", "s", "--target", "t",
                                 "--out", "OUT/p.safetensors", "--positions", "middle"], "--positions"),
    "align out is a folder": (["align", "--key", "k.safetensors", "--source", "s", "--target", "t",
                               "--out", "OUT"], "--out"),
    "align missing key file": (["align", "--key", "OUT/none.safetensors", "--source", "s", "--target",
                                "t", "--out", "OUT/p.safetensors"], "none.safetensors"),
    "extract unknown dataset": (["extract", "--model", "m", "--out", "OUT/k.safetensors", "--dataset",
                                 "nosuchset"], "--dataset"),
    "steer empty question": (["steer", "--pack", "p.safetensors", "--target", "t", "--question", ""],
                             "--question"),
    "generate out is a folder": (["generate", "--target", "t", "--out", "OUT"], "--out"),
    "generate unknown dataset": (["generate", "--target", "t", "--out", "OUT/g.jsonl", "--dataset",
                                  "nosuchset"], "--dataset"),
    "eval unknown condition": (["eval", "--pack", "p.safetensors", "--target", "t", "--out", "OUT/e",
                                "--conditions", "direct,telepathy"], "telepathy"),
    "export unknown format": (["export", "--pack", "p.safetensors", "--format", "onnx", "--out",
                               "OUT/x"], "--format"),
    "demo unknown organism": (["demo", "--target", "chain-xl", "--html", "OUT/d.html"], "--target"),
    "demo unknown method": (["demo", "--method", "svdd", "--html", "OUT/d.html"], "--method"),
    "run rank above n": (["run", "--rank", "300", "--n-align", "256", "--data", "last", "--out", "OUT/run"],
                         "--rank"),
    "run unknown data": (["run", "--data", "words", "--out", "OUT/run"], "tokens+last"),
}


@pytest.fixture()
def no_model(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the arguments were checked")

    monkeypatch.setattr(cli, "_load", refuse)
    monkeypatch.setattr("unlock_lens.organisms.registry.load_organism", refuse)


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_exit_2_before_any_model(case, tmp_path, capsys, no_model):
    argv, flag = CASES[case]
    argv = [a.replace(OUT, str(tmp_path)) for a in argv]
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


def test_a_bug_keeps_its_traceback(monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("a real bug")

    monkeypatch.setattr(cli, "_load", boom)
    with pytest.raises(RuntimeError, match="a real bug"):
        cli.main(["extract", "--model", "m", "--out", "k.safetensors"])


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
