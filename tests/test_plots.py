"""Figure builders on small tidy frames: trace counts, titles, axis labels, legends, saving."""

import warnings

import pandas as pd
import plotly.graph_objects as go
import pytest
import torch

from unlock_lens import plots
from unlock_lens.diagnostics.sharpening import first_token_stats, generation_stats, word_frequencies
from unlock_lens.diagnostics.similarity import cka_matrix
from unlock_lens.errors import UnlockLensError


def sweep_frame(x: str, values, sweep: str) -> pd.DataFrame:
    rows = []
    for i, v in enumerate(values):
        for cond, shift in (("key", 0.0), ("random", 1.0)):
            rows.append({"sweep": sweep, "cell": i, "condition": cond, x: v, "method": "svd",
                         "rank": 4, "kl_mean": 1.0 + shift + 0.1 * i, "kl_std": 0.2,
                         "kl_sem": 0.05, "logp_mean": -1.0, "logp_std": 0.1, "logp_sem": 0.02})
    rows.append({"sweep": sweep, "cell": -1, "condition": "direct", "kl_mean": 3.0, "kl_std": 0.3,
                 "kl_sem": 0.1, "logp_mean": -2.0, "logp_std": 0.1, "logp_sem": 0.03})
    return pd.DataFrame(rows)


def check_labels(fig: go.Figure, x: str | None = None, y: str | None = None) -> None:
    assert fig.layout.title.text
    assert fig.layout.showlegend is True
    if x is not None:
        assert fig.layout.xaxis.title.text == x
    if y is not None:
        assert fig.layout.yaxis.title.text == y


def test_layer_sweep_figure():
    frame = sweep_frame("layer", [0, 1, 2, 3], "single_layer")
    fig = plots.layer_sweep_figure(frame)
    # random band + random mean + key line + legend entry for the unsteered baseline
    assert len(fig.data) == 4
    check_labels(fig, "steered target layer", "KL(CoT prompt || steered) [nats]")
    key = [t for t in fig.data if t.name == "transferred key"][0]
    assert list(key.x) == [0, 1, 2, 3]
    assert key.error_y.array[0] == pytest.approx(1.959964 * 0.05)
    band = [t for t in fig.data if t.fill == "toself"][0]
    assert max(band.y) == pytest.approx(2.3 + 0.2)  # random mean + std at the last layer
    assert len(fig.layout.shapes) == 1 and fig.layout.shapes[0].y0 == 3.0  # unsteered line
    loo = plots.layer_sweep_figure(frame.assign(sweep="leave_one_out"), metric="logp")
    check_labels(loo, "target layer left out", "log p(CoT top-m first tokens)")
    no_controls = plots.layer_sweep_figure(frame[frame.condition != "random"])
    assert len(no_controls.data) == 2


def test_alpha_sweep_figure():
    fig = plots.alpha_sweep_figure(sweep_frame("alpha", [0.05, 0.1, 0.2, 0.5], "alpha"))
    assert len(fig.data) == 4
    check_labels(fig, "alpha")
    assert fig.layout.xaxis.type == "log"


def test_rank_sweep_figure_one_line_per_method():
    frames = [sweep_frame("rank", [1, 2, 4], "rank").assign(method=m) for m in ("svd", "cca", "ridge")]
    frame = pd.concat(frames, ignore_index=True)
    frame = frame[~((frame.condition == "direct") & (frame.method != "svd"))]
    fig = plots.rank_sweep_figure(frame)
    assert len(fig.data) == 6  # a key line and a random line per method
    assert sorted(t.name for t in fig.data if "random" not in t.name) == ["cca", "ridge", "svd"]
    check_labels(fig, "rank k")
    assert len(plots.rank_sweep_figure(frame, show_random=False).data) == 3


def test_cka_heatmap_axes():
    H_s = torch.randn(20, 3, 8, generator=torch.Generator().manual_seed(0))
    H_t = torch.randn(20, 4, 6, generator=torch.Generator().manual_seed(1))
    frame = cka_matrix(H_s, H_t)
    fig = plots.cka_heatmap(frame)
    assert len(fig.data) == 1 and isinstance(fig.data[0], go.Heatmap)
    assert fig.data[0].z.shape == (3, 4)
    assert list(fig.data[0].x) == [0, 1, 2, 3] and list(fig.data[0].y) == [0, 1, 2]
    assert fig.data[0].z[1][2] == pytest.approx(
        frame.query("source_layer == 1 and target_layer == 2").cka.item())
    check_labels(fig, "target layer", "source layer")
    assert fig.data[0].colorbar.title.text == "CKA"


def test_principal_angles_figure():
    frame = pd.DataFrame({"source_layer": [0, 0, 1, 1], "target_layer": [0, 0, 2, 2],
                          "index": [1, 2, 1, 2], "angle": [0.1, 0.2, 0.3, 0.4],
                          "angle_deg": [5.7, 11.5, 17.2, 22.9]})
    fig = plots.principal_angles_figure(frame)
    assert len(fig.data) == 2
    assert fig.data[1].name == "source 1 → target 2"
    check_labels(fig, "principal angle index", "angle [degrees]")


def test_word_bars_figure():
    frame = word_frequencies({"direct": ["The answer is 8", "8", "The answer"],
                              "steered": ["Let's think", "First we", "Let's see"]})
    fig = plots.word_bars_figure(frame)
    assert len(fig.data) == 4  # 2 conditions x 2 positions
    assert sum(bool(t.showlegend) for t in fig.data) == 2
    assert fig.layout.yaxis.title.text == "fraction of outputs"
    assert fig.layout.xaxis.title.text == "word"
    assert [a.text for a in fig.layout.annotations] == ["first generated word", "second generated word"]
    first_direct = fig.data[0]
    assert dict(zip(first_direct.x, first_direct.y, strict=True))["The"] == pytest.approx(2 / 3)


def test_histograms():
    stats = first_token_stats({"direct": torch.zeros(5, 4), "cot": torch.randn(5, 4)})
    fig = plots.entropy_histogram(stats)
    assert len(fig.data) == 2
    check_labels(fig, "entropy [nats]", "count")
    gen = generation_stats({"a": ["one two", "three"], "b": ["x y z"], "c": ["w"]})
    fig = plots.length_histogram(gen)
    assert len(fig.data) == 3
    check_labels(fig, "number of words", "count")
    with pytest.raises(UnlockLensError, match="needs columns"):
        plots.histogram_figure(gen, "nope")


def test_save_figure_html_and_png_if_possible(tmp_path):
    fig = plots.alpha_sweep_figure(sweep_frame("alpha", [0.1, 0.2], "alpha"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        written = plots.save_figure(fig, tmp_path / "sub" / "alpha.png")
    assert written[0] == tmp_path / "sub" / "alpha.html"
    assert "Steering strength sweep" in written[0].read_text()
    if len(written) == 2:  # PNG export works here
        assert written[1].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    only_html = plots.save_figure(fig, tmp_path / "b", png=False)
    assert only_html == [tmp_path / "b.html"]


def test_save_figure_png_required_raises_when_export_fails(tmp_path, monkeypatch):
    fig = go.Figure()

    def broken(*args, **kwargs):
        raise RuntimeError("no chrome")

    monkeypatch.setattr(go.Figure, "write_image", broken)
    with pytest.raises(UnlockLensError, match="PNG export failed"):
        plots.save_figure(fig, tmp_path / "f", png=True)
    with pytest.warns(UserWarning, match="HTML only"):
        assert plots.save_figure(fig, tmp_path / "g") == [tmp_path / "g.html"]
