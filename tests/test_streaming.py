"""capture_to_disk: per-batch shards + manifest, resume without recomputation, refusal of a
foreign folder, bounded memory (counted, not timed)."""

from __future__ import annotations

import json
import weakref

import pytest
import torch

import unlock_lens.activations as activations
from unlock_lens.activations import capture
from unlock_lens.errors import UnlockLensError
from unlock_lens.model_info import ModelInfo
from unlock_lens.steer import Steering, attached_hooks
from unlock_lens.streaming import MANIFEST, capture_to_disk, iter_shards, load_capture

PROMPTS = [f"Question {i}: what is {i} plus {2 * i + 1}?" + " Think." * (i % 4) for i in range(11)]
BATCH = 3  # 11 prompts -> 4 batches (3, 3, 3, 2)
N_BATCHES = 4


def _count_forwards(model):
    calls = {"n": 0}

    def count(x, hook):
        calls["n"] += 1
        return x

    return calls, [("blocks.0.hook_resid_pre", count)]


def test_interrupted_capture_resumes_only_the_missing_batches(qwen, tmp_path):
    layers = [0, 2]
    reference = capture(qwen, PROMPTS, layers, batch_size=BATCH)
    out = tmp_path / "acts"
    done_before_crash = 2
    seen = {"n": 0}

    def crash(x, hook):
        seen["n"] += 1
        if seen["n"] == done_before_crash + 1:
            raise KeyboardInterrupt
        return x

    with pytest.raises(KeyboardInterrupt), qwen.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", crash)]):
        capture_to_disk(qwen, PROMPTS, layers, out, batch_size=BATCH)
    assert attached_hooks(qwen) == {}
    assert sorted(p.name for p in out.glob("shard-*")) == ["shard-00000.safetensors",
                                                          "shard-00001.safetensors"]
    assert not list(out.glob(".*.tmp"))  # an in-process interrupt leaves no temp file
    with pytest.raises(UnlockLensError, match="2 of 4 shards are missing"):
        load_capture(out)

    calls, counter = _count_forwards(qwen)
    with qwen.hooks(fwd_hooks=counter):
        capture_to_disk(qwen, PROMPTS, layers, out, batch_size=BATCH)
    assert calls["n"] == N_BATCHES - done_before_crash
    assert torch.equal(load_capture(out), reference)

    with qwen.hooks(fwd_hooks=counter):  # complete: nothing is recomputed
        capture_to_disk(qwen, PROMPTS, layers, out, batch_size=BATCH)
    assert calls["n"] == N_BATCHES - done_before_crash

    # a damaged shard is recomputed, the rest are kept
    shard = out / "shard-00003.safetensors"
    shard.write_bytes(shard.read_bytes()[:-10])
    with qwen.hooks(fwd_hooks=counter):
        capture_to_disk(qwen, PROMPTS, layers, out, batch_size=BATCH)
    assert calls["n"] == N_BATCHES - done_before_crash + 1
    assert torch.equal(load_capture(out), reference)


def test_manifest_records_provenance_and_foreign_folders_are_refused(tiny_models, tmp_path):
    qwen, llama = tiny_models["qwen2"], tiny_models["llama"]
    out = capture_to_disk(qwen, PROMPTS[:4], [1], tmp_path / "acts", batch_size=2)
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["model"] == ModelInfo.of(qwen).to_dict()
    assert manifest["layers"] == [1] and manifest["hook"] == "resid_post"
    assert manifest["n_prompts"] == 4 and len(manifest["prompt_hash"]) == 64
    assert manifest["shards"] == ["shard-00000.safetensors", "shard-00001.safetensors"]
    cases = [
        (llama, PROMPTS[:4], [1], {}, "model"),  # same shape, another model
        (qwen, PROMPTS[1:5], [1], {}, "prompt_hash"),
        (qwen, PROMPTS[:4], [2], {}, "layers"),
        (qwen, PROMPTS[:4], [1], {"hook": "resid_pre"}, "hook"),
        (qwen, PROMPTS[:4], [1], {"batch_size": 4}, "batch_size"),
        (qwen, PROMPTS[:4], [1], {"steering": Steering({1: torch.ones(64)})}, "steering"),
    ]
    for model, prompts, layers, kwargs, what in cases:
        with pytest.raises(UnlockLensError, match=f"another .*{what}.*use another folder"):
            capture_to_disk(model, prompts, layers, out, **{"batch_size": 2, **kwargs})
    (out / MANIFEST).write_text("{not json")
    with pytest.raises(UnlockLensError, match="unreadable"):
        capture_to_disk(qwen, PROMPTS[:4], [1], out, batch_size=2)


def test_memory_holds_at_most_one_batch_of_rows(qwen, tmp_path, monkeypatch):
    """Instrumented: every activation buffer is tracked until freed; the peak of live rows is
    one batch, although the prompt set spans several batches."""
    live = {"rows": 0, "peak": 0, "allocs": 0}
    original = activations.new_rows

    def tracked(n, n_layers, d, device):
        buf = original(n, n_layers, d, device)
        live["rows"] += n
        live["allocs"] += 1
        live["peak"] = max(live["peak"], live["rows"])
        weakref.finalize(buf, lambda: live.__setitem__("rows", live["rows"] - n))
        return buf

    monkeypatch.setattr(activations, "new_rows", tracked)
    out = capture_to_disk(qwen, PROMPTS, None, tmp_path / "acts", batch_size=BATCH)
    assert live["allocs"] == N_BATCHES and live["peak"] <= BATCH and live["rows"] == 0
    peak_while_reading = 0
    for idx, rows in iter_shards(out):
        assert rows.shape == (len(idx), qwen.cfg.n_layers, qwen.cfg.d_model)
        peak_while_reading = max(peak_while_reading, len(idx))
    assert peak_while_reading <= BATCH


def test_steered_streaming_equals_steered_capture(qwen, tmp_path):
    steering = Steering({0: torch.randn(64, generator=torch.Generator().manual_seed(0))}, alpha=0.4)
    ref = capture(qwen, PROMPTS[:5], [1, 2], batch_size=2, steering=steering)
    out = capture_to_disk(qwen, PROMPTS[:5], [1, 2], tmp_path / "s", batch_size=2, steering=steering)
    assert torch.equal(load_capture(out), ref)
    assert attached_hooks(qwen) == {}


def test_streaming_bad_input(qwen, tmp_path):
    with pytest.raises(UnlockLensError, match="empty"):
        capture_to_disk(qwen, [], None, tmp_path / "e")
    with pytest.raises(UnlockLensError, match="out of range"):
        capture_to_disk(qwen, ["a"], [9], tmp_path / "e")
    with pytest.raises(UnlockLensError, match="batch_size"):
        capture_to_disk(qwen, ["a"], None, tmp_path / "e", batch_size=0)
    with pytest.raises(UnlockLensError, match="longer than the model's context"):
        capture_to_disk(qwen, ["1 " * 2000], None, tmp_path / "e")
    assert not (tmp_path / "e").exists()  # refused before anything is written
