"""The UNLOCK pipeline end to end: capture → fit → :class:`~unlock_lens.pack.CapabilityPack`.

    key  = extract_masterkey(locked, unlocked, key_questions)           # source space, per layer
    maps = align_key(key, source_locked, target, align_questions)        # one LayerMap per target layer
    pack = build_pack(key, source_locked, target, align_questions)       # r^(t) = m^(s(t)) W_t
    with pack.steering().applied(target_model): ...

Target layer t reads the key of source layer s(t) = depth_match(L_s, L_t)[t].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from unlock_lens.activations import Variant, capture_pair, check_layers
from unlock_lens.align import LayerMap
from unlock_lens.align.layers import (
    AlignSpec,
    LayerPairing,
    fit_layer_maps,
    fit_layer_maps_from_stats,
)
from unlock_lens.align.stats import STATS_METHODS
from unlock_lens.alignment_data import (
    alignment_rows,
    alignment_stats,
    generate_continuations,
    parse_data,
)
from unlock_lens.errors import UnlockLensError
from unlock_lens.generation import Generation, generate
from unlock_lens.masterkey import Aggregator, MasterKey, extract_masterkey
from unlock_lens.pack import CapabilityPack
from unlock_lens.prompts import PromptFormat, get_format
from unlock_lens.protocol import Contrast, Protocol, get_protocol
from unlock_lens.steer import Normalisation, Positions

__all__ = ["CapabilityPack", "Unlock", "align_key", "build_pack"]  # CapabilityPack: from unlock_lens.pack


def align_key(
    key: MasterKey,
    source: Variant,
    target: Variant,
    questions: Sequence[str],
    spec: AlignSpec = AlignSpec(),  # noqa: B008 - frozen dataclass
    *,
    target_layers: Sequence[int] | None = None,
    batch_size: int = 16,
    progress: bool = False,
    unlocked: Variant | None = None,
) -> dict[int, LayerMap]:
    """Fit one LayerMap per target layer on the same questions through source and target.

    ``source`` is the source-locked variant (the key's model, locked format); each side uses
    its own tokenizer. ``spec.data`` picks the paired states (``last``: the last prompt token of
    each question; ``tokens`` / ``text`` / ``continuations``: :mod:`unlock_lens.alignment_data`,
    fitted from streamed Gram statistics). ``continuations`` needs ``unlocked``, the source's
    unlocked variant (the key's other side), which generates them (``spec.continuation_*``).
    Both sides' last layers are read in the key's ``final_layer`` basis.
    ``spec.centered=None`` resolves to the authors' choice for this key
    (:meth:`AlignSpec.for_key`).
    """
    key.check_model(source.model)
    spec = spec.for_key(key)
    t_layers = check_layers(target.model, target_layers)
    pairing = LayerPairing.by_depth(key.source.n_layers, int(target.model.cfg.n_layers), t_layers)
    pairing.require_source(key.layers)
    if spec.data != "last":
        continuations = None
        if "continuations" in parse_data(spec.data):
            if unlocked is None:
                raise UnlockLensError(
                    f"alignment data {spec.data!r} needs the source's unlocked variant to generate "
                    "the continuations: pass unlocked=Variant(source model, its unlocked format)")
            continuations = generate_continuations(
                unlocked, questions, max_new_tokens=spec.continuation_tokens,
                stop_strings=spec.continuation_stop or (), batch_size=batch_size, progress=progress)
        pairs = dict(data=spec.data, max_pairs=spec.max_pairs, seed=spec.data_seed, hook=key.hook,
                     final_layer=key.final_layer, batch_size=batch_size, progress=progress,
                     continuations=continuations)
        if spec.method in STATS_METHODS:  # streamed into Gram statistics: bounded memory
            return fit_layer_maps_from_stats(alignment_stats(source, target, questions, pairing, **pairs),
                                             pairing, spec)
        # a method without a fit from statistics (e.g. one a user registered) gets the rows
        return fit_layer_maps(*alignment_rows(source, target, questions, pairing, **pairs), pairing, spec)
    H_s, H_t = capture_pair(source, target, questions, pairing.source_layers, pairing.target_layers,
                            hook=key.hook, batch_size=batch_size, progress=progress,
                            final_layer=key.final_layer)
    return fit_layer_maps(H_s, H_t, pairing, spec)


def build_pack(
    key: MasterKey,
    source: Variant,
    target: Variant,
    questions: Sequence[str],
    spec: AlignSpec = AlignSpec(),  # noqa: B008 - frozen dataclass
    *,
    alpha: float = 0.1,
    normalisation: Normalisation = "rotate",
    positions: Positions = "last_prompt",
    batch_size: int = 16,
    progress: bool = False,
    unlocked: Variant | None = None,
    **record: Any,
) -> CapabilityPack:
    """``align_key`` + a CapabilityPack that records how the maps were fitted (``record``:
    extra provenance fields, e.g. the protocol's name; ``unlocked``: as in ``align_key``)."""
    spec = spec.for_key(key)
    maps = align_key(key, source, target, questions, spec, batch_size=batch_size, progress=progress,
                     unlocked=unlocked)
    return CapabilityPack.from_alignment(
        key, maps, source=source, target=target, questions=questions, spec=spec, alpha=alpha,
        normalisation=normalisation, positions=positions, final_layer=key.final_layer, **record,
    )


@dataclass
class Unlock:
    """The pipeline on live models: ``extract`` → ``align`` → ``pack`` / ``generate``.

    ``source_unlocked`` given → a model-driven key (post-trained vs base, both with the
    unlocked format); otherwise a prompt-driven key on ``source`` (locked vs unlocked format).
    ``protocol`` (``"library"``, ``"paper"`` or a :class:`~unlock_lens.protocol.Protocol`)
    supplies every choice left as ``None``: formats and special tokens, the target's format for
    this kind of key, the last layer's basis, whether key and alignment questions may be
    shared, aggregator, map, alpha and decoding.
    """

    source: Any
    target: Any
    source_unlocked: Any = None
    protocol: Protocol | str = "library"
    locked_format: PromptFormat | str | None = None
    unlocked_format: PromptFormat | str | None = None
    target_format: PromptFormat | str | None = None
    aggregator: Aggregator | None = None
    method: str | None = None
    rank: int | None = None
    alpha: float | None = None
    normalisation: Normalisation | None = None
    positions: Positions | None = None
    batch_size: int = 16
    progress: bool = False

    def __post_init__(self) -> None:
        self.protocol = get_protocol(self.protocol)
        p = self.protocol
        src_locked, src_unlocked = p.formats(self.source.tokenizer)
        self.locked_format = get_format(self.locked_format or src_locked)
        self.unlocked_format = get_format(self.unlocked_format or src_unlocked)
        self.target_format = get_format(self.target_format or p.target_format(self.target.tokenizer, self.contrast))
        self.aggregator = self.aggregator or p.aggregator
        self.method = self.method or p.align.method
        self.rank = self.rank or p.align.rank
        self.alpha = p.alpha if self.alpha is None else self.alpha
        self.normalisation = self.normalisation or p.normalisation
        self.positions = self.positions or p.positions

    @property
    def contrast(self) -> Contrast:
        return "model" if self.source_unlocked is not None else "prompt"

    @property
    def locked(self) -> Variant:
        fmt = self.unlocked_format if self.source_unlocked is not None else self.locked_format
        return Variant(self.source, fmt)

    @property
    def unlocked(self) -> Variant:
        return Variant(self.source_unlocked or self.source, self.unlocked_format)

    @property
    def target_variant(self) -> Variant:
        return Variant(self.target, self.target_format)

    @property
    def spec(self) -> AlignSpec:
        """The protocol's alignment spec with this pipeline's method and rank."""
        return replace(self.protocol.align, method=self.method, rank=self.rank)

    def extract(self, questions: Sequence[str], **kwargs: Any) -> MasterKey:
        kwargs.setdefault("final_layer", self.protocol.final_layer)
        return extract_masterkey(
            self.locked, self.unlocked, questions, aggregator=self.aggregator,
            batch_size=self.batch_size, progress=self.progress, **kwargs,
        )

    def align(self, key: MasterKey, questions: Sequence[str], spec: AlignSpec | None = None) -> CapabilityPack:
        """Fit the maps into the target (``spec`` defaults to the protocol's with this
        pipeline's method and rank; ``continuations`` are generated by :attr:`unlocked`, cut at
        the protocol's stop strings unless the spec names its own)."""
        spec = spec or self.spec
        if "continuations" in spec.data and spec.continuation_stop is None:
            spec = replace(spec, continuation_stop=tuple(self.protocol.decoding_for(self.contrast).stop_strings))
        return build_pack(key, self.locked, self.target_variant, questions, spec,
                          alpha=self.alpha, normalisation=self.normalisation, positions=self.positions,
                          batch_size=self.batch_size, progress=self.progress, unlocked=self.unlocked,
                          protocol=self.protocol.name)

    def run(self, key_questions: Sequence[str], align_questions: Sequence[str]) -> CapabilityPack:
        """Extract on ``key_questions``, align on ``align_questions``; they must be disjoint
        unless the protocol shares them (the authors' code aligns on the key's questions)."""
        overlap = set(key_questions) & set(align_questions)
        if overlap and not self.protocol.shared_questions and key_questions is not align_questions:
            raise UnlockLensError(
                f"{len(overlap)} questions are in both the key and the alignment sets: keep them "
                "disjoint (split_problems does this), or use protocol='paper', which shares them"
            )
        return self.align(self.extract(key_questions), align_questions)

    def generate(
        self,
        questions: Sequence[str],
        pack: CapabilityPack | None = None,
        *,
        alpha: float | None = None,
        max_new_tokens: int | None = None,
        stop_strings: Sequence[str] | None = None,
    ) -> list[Generation]:
        """Greedy target completions in the target's format, steered by ``pack`` if given
        (token budget and stop strings default to the protocol's for this kind of key)."""
        decoding = self.protocol.decoding_for(self.contrast)
        steering = None
        if pack is not None:
            pack.check_model(self.target)
            steering = pack.steering(alpha)
        return generate(
            self.target, self.target_variant.prompts(questions), steering=steering,
            max_new_tokens=max_new_tokens or decoding.max_new_tokens,
            stop_strings=decoding.stop_strings if stop_strings is None else stop_strings,
            batch_size=self.batch_size, progress=self.progress,
            special_tokens=self.target_variant.special_tokens,
        )
