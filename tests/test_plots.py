"""Figure builders on small tidy frames: trace counts, titles, axis labels, legends, saving."""

import math
import warnings

import pandas as pd
import plotly.graph_objects as go
import pytest
import torch

from unlock_lens import plots
from unlock_lens.diagnostics.sharpening import first_token_stats, generation_stats, word_frequencies
from unlock_lens.diagnostics.similarity import cka_matrix
from unlock_lens.errors import UnlockLensError

KL_AXIS = "KL(CoT prompt ‖ steered direct prompt) [nats]"


def sweep_frame(x: str, values, sweep: str) -> pd.DataFrame:
    rows = []
    for i, v in enumerate(values):
        for cond, shift, seeds in (("key", 0.0, 0), ("random", 1.0, 3)):
            rows.append({"sweep": sweep, "cell": i, "condition": cond, x: v, "method": "svd",
                         "rank": 4, "kl_mean": 1.0 + shift + 0.1 * i, "kl_std": 0.2,
                         "kl_sem": 0.05, "logp_mean": -1.0, "logp_std": 0.1, "logp_sem": 0.02,
                         "n_seeds": seeds})
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
    check_labels(fig, "steered target layer", KL_AXIS)
    assert [t.name for t in fig.data if t.showlegend is not False] == [
        "random (3 seeds): mean ± std", "transferred key", "direct (unsteered)"]
    key = [t for t in fig.data if t.name == "transferred key"][0]
    assert list(key.x) == [0, 1, 2, 3]
    assert key.error_y.array[0] == pytest.approx(1.959964 * 0.05)
    band = [t for t in fig.data if t.fill == "toself"][0]
    assert max(band.y) == pytest.approx(2.3 + 0.2)  # random mean + std at the last layer
    assert len(fig.layout.shapes) == 1 and fig.layout.shapes[0].y0 == 3.0  # unsteered line
    loo = plots.layer_sweep_figure(frame.assign(sweep="leave_one_out"), metric="logp")
    check_labels(loo, "target layer left out", "log p(CoT prompt's top-m first tokens)")
    no_controls = plots.layer_sweep_figure(frame[frame.condition != "random"])
    assert len(no_controls.data) == 2
    native = pd.DataFrame([{"condition": "native", "kl_mean": 0.5, "kl_std": 0.1, "kl_sem": 0.01}])
    with_native = plots.layer_sweep_figure(pd.concat([frame, native], ignore_index=True))
    assert [sh.y0 for sh in with_native.layout.shapes] == [3.0, 0.5]
    assert with_native.data[-1].name == "native key"


def test_alpha_sweep_figure():
    fig = plots.alpha_sweep_figure(sweep_frame("alpha", [0.05, 0.1, 0.2, 0.5], "alpha"))
    assert len(fig.data) == 4
    check_labels(fig, "alpha")
    assert fig.layout.xaxis.type == "log"


def rank_frame() -> pd.DataFrame:
    """``ablations.rank_sweep``-shaped rows: svd and cca at ranks 1, 2, 4; ridge (no rank)
    repeated at every rank; each with a random control; one direct and one native row."""
    rows = []
    key_kl = {"svd": [5.0, 3.0, 2.0], "cca": [4.0, 2.5, 2.2], "ridge": [2.8, 2.8, 2.8]}
    rnd = {"svd": (15.0, 0.5), "cca": (14.0, 0.2), "ridge": (15.5, 0.1)}
    for method, kls in key_kl.items():
        for rank, kl in zip((1, 2, 4), kls, strict=True):
            rows.append({"condition": "key", "method": method, "rank": rank, "kl_mean": kl,
                         "kl_std": 1.0, "kl_sem": 0.1, "n_seeds": 0})
            mean, std = rnd[method]
            rows.append({"condition": "random", "method": method, "rank": rank,
                         "kl_mean": mean + rank / 10, "kl_std": std, "kl_sem": std / 2,
                         "n_seeds": 3})
    rows.append({"condition": "direct", "kl_mean": 16.0, "kl_std": 0.5, "kl_sem": 0.05})
    rows.append({"condition": "native", "kl_mean": 3.4, "kl_std": 0.5, "kl_sem": 0.05})
    return pd.DataFrame(rows)


def by_name(fig: go.Figure) -> dict:
    return {t.name: t for t in fig.data}


def test_rank_sweep_figure_lines_band_and_references():
    fig = plots.rank_sweep_figure(rank_frame())
    traces = by_name(fig)
    check_labels(fig, "rank k", KL_AXIS)
    # one line per rank-k method, at its ranks, with 95% CIs
    assert list(traces["svd"].x) == [1, 2, 4] and list(traces["svd"].y) == [5.0, 3.0, 2.0]
    assert list(traces["cca"].y) == [4.0, 2.5, 2.2]
    assert traces["cca"].error_y.array[0] == pytest.approx(1.959964 * 0.1)
    assert traces["svd"].marker.symbol != traces["cca"].marker.symbol
    # ridge: one flat line over the rank axis, not a line through every rank
    ridge = [t for t in fig.data if t.name.startswith("ridge")]
    assert len(ridge) == 1 and ridge[0].name == "ridge (no rank)"
    assert list(ridge[0].x) == [1.0, 4.0] and list(ridge[0].y) == [2.8, 2.8]
    # every map's random control: one band (one legend entry), lowest mean - std to highest
    # mean + std per rank, and its mean over the maps
    bands = [t for t in fig.data if t.fill == "toself"]
    assert len(bands) == 1 and bands[0].name == "random (3 seeds): mean ± std"
    assert sum(t.legendgroup == "random" and t.showlegend is not False for t in fig.data) == 1
    upper = list(bands[0].y[:3])  # ranks 1, 2, 4 out; lower edge back
    lower = list(bands[0].y[3:])[::-1]
    assert upper == pytest.approx([15.5 + 0.1 + 0.1, 15.5 + 0.2 + 0.1, 15.5 + 0.4 + 0.1])
    assert lower == pytest.approx([14.0 + 0.1 - 0.2, 14.0 + 0.2 - 0.2, 14.0 + 0.4 - 0.2])
    mean = [t for t in fig.data if t.name == "random (3 seeds): mean"][0]
    assert list(mean.y) == pytest.approx([(15.0 + 14.0 + 15.5) / 3 + r / 10 for r in (1, 2, 4)])
    # references: flat lines with the shared labels
    assert list(traces["direct (unsteered)"].y) == [16.0, 16.0]
    assert list(traces["native key"].y) == [3.4, 3.4]
    assert traces["native key"].line.color == plots.CONDITIONS["native"][1]
    assert fig.layout.xaxis.type == "log"
    assert len(plots.rank_sweep_figure(rank_frame(), show_random=False).data) == 5


def test_rank_sweep_figure_log_y_ticks():
    fig = plots.rank_sweep_figure(rank_frame(), log_y=True)
    assert fig.layout.yaxis.type == "log"
    assert list(fig.layout.yaxis.tickvals) == [1.0, 2.0, 5.0, 10.0, 20.0]
    assert plots.log_ticks([0.03, 0.4, float("nan"), 0.0]) == pytest.approx(
        [0.02, 0.05, 0.1, 0.2, 0.5])
    assert plots.log_ticks([0.0, -1.0]) == []


def test_rank_sweep_figure_of_an_ablation_frame_without_rank_k_methods():
    frame = rank_frame()
    only_ridge = frame[(frame.method == "ridge") | frame.method.isna()]
    fig = plots.rank_sweep_figure(only_ridge)
    assert by_name(fig)["ridge (no rank)"].y[0] == 2.8
    with pytest.raises(UnlockLensError, match="no 'key' rows"):
        plots.rank_sweep_figure(frame[frame.condition != "key"])


def test_rank_free_methods_match_the_alignment_registry():
    from unlock_lens.align.base import _RANK_FREE

    assert set(plots.RANK_FREE) == set(_RANK_FREE)


def test_rank_fit_figure_panels_and_flat_ridge():
    rows = []
    for layer, shift in ((0, 0.0), (1, 0.1)):
        for rank, r2 in ((1, -3.0), (2, 0.5), (4, 0.8)):
            rows.append({"target_layer": layer, "method": "svd", "rank": rank,
                         "heldout_r2": r2 + shift, "heldout_relative_error": 1 - r2 / 4,
                         "cosine": 0.9 + shift})
        rows.append({"target_layer": layer, "method": "ridge", "rank": 96, "heldout_r2": 0.9 + shift,
                     "heldout_relative_error": 0.2, "cosine": 0.95})
    fig = plots.rank_fit_figure(pd.DataFrame(rows))
    assert [a.text for a in fig.layout.annotations] == list(plots.FIT_MEASURES.values())
    assert len(fig.data) == 6  # (svd, ridge) x 3 panels
    assert [t.name for t in fig.data if t.showlegend] == ["svd", "ridge (no rank)"]
    svd_r2 = fig.data[0]
    assert list(svd_r2.x) == [1, 2, 4] and list(svd_r2.y) == pytest.approx([-2.95, 0.55, 0.85])
    ridge_r2 = fig.data[1]
    assert list(ridge_r2.x) == [1.0, 4.0] and list(ridge_r2.y) == pytest.approx([0.95, 0.95])
    assert fig.layout.yaxis.range == (-1.0, 1.02)  # R² clipped at -1, not -2.95
    assert fig.layout.xaxis3.title.text == "rank k" and fig.layout.xaxis3.type == "log"
    no_cos = plots.rank_fit_figure(pd.DataFrame(rows).drop(columns="cosine"))
    assert len(no_cos.data) == 4
    with pytest.raises(UnlockLensError, match="none of"):
        plots.rank_fit_figure(pd.DataFrame({"method": ["svd"], "rank": [1]}))


def test_condition_labels_and_colours_are_shared():
    assert plots.condition_label("direct") == "direct (unsteered)"
    assert plots.condition_label("cot") == "CoT prompt"
    assert plots.condition_label("random", 3) == "random (3 seeds)"
    assert plots.condition_label("random", 1) == "random (1 seed)"
    assert plots.condition_label("key", 3) == "transferred key"
    assert plots.condition_label("my own") == "my own"
    assert plots.condition_colour("my own", 1) == plots.PALETTE[1]
    words = word_frequencies({"direct": ["a b"], "key": ["c d"]}, positions=(1,))
    bars = plots.word_bars_figure(words)
    layer = plots.layer_sweep_figure(sweep_frame("layer", [0, 1], "single_layer"))
    for fig in (bars, layer):
        key = [t for t in fig.data if t.name == "transferred key"]
        assert len(key) == 1
        colour = key[0].marker.color if isinstance(key[0], go.Bar) else key[0].line.color
        assert colour == plots.CONDITIONS["key"][1]
    assert bars.data[0].name == "direct (unsteered)"


def test_sharpening_figure_one_box_per_condition_and_panel():
    logits = {"direct": torch.zeros(3, 8), "cot": torch.zeros(3, 8),
              "key": torch.log(torch.tensor([[0.5, 0.5] + [1e-9] * 6] * 3))}
    logits["cot"][:, 2] = 40.0  # entropy ~0: drawn at the floor
    stats = first_token_stats(logits, top_k=(1,), reference="cot")
    fig = plots.sharpening_figure(stats, columns=("entropy", "top1_mass", "ref_token_prob"))
    assert len(fig.data) == 9
    assert [t.name for t in fig.data if t.showlegend] == ["direct (unsteered)", "CoT prompt",
                                                           "transferred key"]
    entropy = {t.name: list(t.y) for t in fig.data[:3]}
    assert entropy["direct (unsteered)"] == pytest.approx([math.log(8)] * 3)
    assert entropy["transferred key"] == pytest.approx([math.log(2)] * 3, abs=1e-6)
    assert entropy["CoT prompt"] == [1e-6] * 3
    assert fig.layout.yaxis.type == "log" and fig.layout.yaxis2.type != "log"
    assert list(fig.data[4].y) == pytest.approx([1.0] * 3)  # CoT top-1 mass
    assert list(fig.data[8].y) == pytest.approx([0.0] * 3, abs=1e-6)  # key: p(cot's token)
    assert fig.data[2].marker.color == plots.CONDITIONS["key"][1]
    assert [a.text for a in fig.layout.annotations] == [
        "entropy [nats]", "top-1 mass", "p(CoT prompt's first token)"]
    linear = plots.sharpening_figure(stats, columns=("entropy",), log_entropy=False)
    assert list(linear.data[1].y)[0] < 1e-6


def test_cka_panels_share_one_colour_scale():
    gen = torch.Generator().manual_seed(0)
    H_s, H_t = torch.randn(20, 3, 8, generator=gen), torch.randn(20, 2, 6, generator=gen)
    a, b = cka_matrix(H_s, H_t), cka_matrix(H_s[:10], H_t[:10])
    fig = plots.cka_panels({"alignment": a, "held-out": b})
    assert [t.z.shape for t in fig.data] == [(3, 2), (3, 2)]
    assert fig.data[1].z[2][1] == pytest.approx(
        b.query("source_layer == 2 and target_layer == 1").cka.item())
    assert {t.coloraxis for t in fig.data} == {"coloraxis"}
    assert (fig.layout.coloraxis.cmin, fig.layout.coloraxis.cmax) == (0, 1)
    assert [a.text for a in fig.layout.annotations] == ["alignment", "held-out"]


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
    tokens = plots.word_bars_figure(frame[frame.position == 1], unit="token")
    assert [a.text for a in tokens.layout.annotations] == ["first generated token"]
    assert tokens.layout.xaxis.title.text == "token"


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


def test_cosine_by_layer_figure_one_line_per_kind_and_panel():
    rows = [{"direction": d, "kind": k, "target_layer": t, "cosine_to_native": c, "setting": "svd k=4"}
            for d, n_layers in (("a → b", 3), ("b → a", 2)) for k, c in (("last", 0.1), ("tokens+last", 0.6))
            for t in range(n_layers)]
    fig = plots.cosine_by_layer_figure(pd.DataFrame(rows))
    assert [(tr.name, len(tr.x)) for tr in fig.data] == [("last", 3), ("tokens+last", 3), ("last", 2),
                                                         ("tokens+last", 2)]
    assert [tr.showlegend for tr in fig.data] == [True, True, False, False]  # one legend entry per kind
    assert fig.data[1].line.color == plots.DATA_KINDS["tokens+last"]
    assert list(fig.data[3].y) == [0.6, 0.6] and fig.data[2].xaxis == "x2"
    assert "svd k=4" in fig.data[0].hovertemplate
    with pytest.raises(UnlockLensError, match="cosine_to_native"):
        plots.cosine_by_layer_figure(pd.DataFrame(rows).drop(columns="cosine_to_native"))
