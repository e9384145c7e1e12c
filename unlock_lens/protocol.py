"""Protocols: every choice of the UNLOCK pipeline around its maths, as one named object.

The maths (mean key, depth match, SVD-subspace map, rotate edit) is shared; what differs
between the authors' code and unlock_lens's defaults is the pipeline around it:

    PAPER = get_protocol("paper")       # the authors' code, exactly (../shared/METHOD.md)
    LIBRARY = get_protocol("library")   # unlock_lens's defaults
    PAPER.differences(LIBRARY)          # -> ['prompts', 'chat', 'special_tokens', ...]
    PAPER.switched("final_layer")       # the paper's protocol with one choice taken from LIBRARY

``Unlock(source, target, protocol="paper")`` runs a whole pipeline under one of them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from unlock_lens.activations import FinalLayer
from unlock_lens.align.layers import AlignSpec
from unlock_lens.errors import UnlockLensError
from unlock_lens.evaluate.runner import DEFAULT_STOP_STRINGS, Decoding
from unlock_lens.interventions import EditDtype
from unlock_lens.masterkey import Aggregator
from unlock_lens.prompts import (
    COT,
    DIRECT,
    GENERAL_COT,
    GENERAL_DIRECT,
    PromptFormat,
    SpecialTokens,
)

Contrast = Literal["prompt", "model"]
#: whose tokenizer encodes a model-driven key's prompts: each model its ``own`` (the library) or
#: the post-trained (``unlocked``) model's for both sides (the authors)
KeyTokenizer = Literal["own", "unlocked"]

#: the authors' stop strings, all 19 in their order (../shared/METHOD.md §4, transcribed from
#: their ``base_class.py``, where four more, "A:" to "D:", are commented out); the model-driven
#: math runs use none
PAPER_STOP_STRINGS = (
    "</s>", "<|im_end|>", "<|endoftext|>", "assistant", "Assistant", "user", "_end", "_start",
    "Question:", "Question", "Continuation", "Continuing", "Continues", "You are an AI",
    "[Question]", "```", "I hope", "Subproblem", "</atok>",
)


@dataclass(frozen=True)
class Protocol:
    """One named set of pipeline choices (the maths is the same under every protocol).

    ``chat=None``: chat formats whenever the tokenizer has a chat template (the library);
    ``target_prompt[contrast]``: which of the two formats the target is aligned and tested
    with; ``shared_questions``: the key and the alignment use the same questions (the last n
    of the pool) instead of disjoint ones; ``decoding[contrast]``: generation settings;
    ``key_tokenizer``: see :data:`KeyTokenizer`; ``edit_dtype``: the dtype the steering edit is
    computed in (:data:`~unlock_lens.interventions.EditDtype`).
    """

    name: str
    locked_format: PromptFormat
    unlocked_format: PromptFormat
    chat: bool | None
    special_tokens: SpecialTokens
    target_prompt: Mapping[Contrast, Literal["locked", "unlocked"]]
    final_layer: FinalLayer
    shared_questions: bool
    aggregator: Aggregator = "mean"
    align: AlignSpec = AlignSpec()
    alpha: float = 0.1
    normalisation: str = "rotate"
    positions: str = "last_prompt"
    decoding: Mapping[Contrast, Decoding] = field(default_factory=dict)
    key_tokenizer: KeyTokenizer = "own"
    edit_dtype: EditDtype = "float32"

    # ---- what a run under this protocol uses ------------------------------------------------

    def formats(self, tokenizer: Any) -> tuple[PromptFormat, PromptFormat]:
        """(locked, unlocked) formats for a model with this tokenizer."""
        chat = bool(getattr(tokenizer, "chat_template", None)) if self.chat is None else self.chat
        return tuple(  # type: ignore[return-value]
            replace(f.as_chat(chat), special_tokens=self.special_tokens)
            for f in (self.locked_format, self.unlocked_format)
        )

    def target_format(self, tokenizer: Any, contrast: Contrast = "prompt") -> PromptFormat:
        """The format the target is aligned and steered with for this kind of key."""
        locked, unlocked = self.formats(tokenizer)
        return unlocked if self.target_prompt[contrast] == "unlocked" else locked

    def decoding_for(self, contrast: Contrast = "prompt") -> Decoding:
        return self.decoding.get(contrast, Decoding())

    def question_sets(
        self, pool: Sequence[str], n_key: int, n_align: int | None = None
    ) -> tuple[list[str], list[str]]:
        """(key questions, alignment questions) taken from ``pool`` (e.g. a train split).

        Shared (the authors): the last ``n_key`` questions of the pool, for both. Disjoint
        (the library): the last ``n_key`` for the key, the ``n_align`` before them to align.
        """
        n_align = n_key if n_align is None else n_align
        if self.shared_questions and n_align != n_key:
            raise UnlockLensError(
                f"protocol {self.name!r} aligns on the key's own questions: n_align ({n_align}) "
                f"must equal n_key ({n_key}); pass n_align=None"
            )
        need = n_key if self.shared_questions else n_key + n_align
        if min(n_key, n_align) < 1 or need > len(pool):
            raise UnlockLensError(
                f"protocol {self.name!r} needs {need} questions (n_key={n_key}, n_align={n_align}) "
                f"but the pool has {len(pool)}: lower n_key / n_align or pass a larger pool"
            )
        key = list(pool[len(pool) - n_key:])
        if self.shared_questions:
            return key, list(key)
        return key, list(pool[len(pool) - n_key - n_align: len(pool) - n_key])

    # ---- comparing protocols ----------------------------------------------------------------

    def differences(self, other: Protocol) -> list[str]:
        """The names (of :data:`DIFFERENCES`) on which this protocol and ``other`` differ."""
        return [name for name, fields in DIFFERENCES.items()
                if any(_field(self, f) != _field(other, f) for f in fields)]

    def switched(self, difference: str, to: Protocol | None = None) -> Protocol:
        """This protocol with one difference taken from ``to`` (default: the library's)."""
        if difference not in DIFFERENCES:
            raise UnlockLensError(f"unknown difference {difference!r}; choose one of {sorted(DIFFERENCES)}")
        to = LIBRARY if to is None else to
        if difference == "prompts":  # the wording only: this protocol's special tokens and chat flag
            return replace(self, name=f"{self.name}+{to.name}:prompts",
                           locked_format=to.locked_format, unlocked_format=to.unlocked_format)
        changes = {f: getattr(to, f) for f in DIFFERENCES[difference]}
        return replace(self, name=f"{self.name}+{to.name}:{difference}", **changes)


def _field(protocol: Protocol, name: str) -> Any:
    value = getattr(protocol, name)
    return (value.name, value.to_dict()) if isinstance(value, PromptFormat) else value


#: the choices a protocol study switches one at a time -> the Protocol fields they cover
DIFFERENCES: dict[str, tuple[str, ...]] = {
    "prompts": ("locked_format", "unlocked_format"),
    "chat": ("chat",),
    "special_tokens": ("special_tokens",),
    "target_prompt": ("target_prompt",),
    "final_layer": ("final_layer",),
    "shared_questions": ("shared_questions",),
    "alignment": ("align",),
    "decoding": ("decoding",),
    "key_tokenizer": ("key_tokenizer",),
    "edit_dtype": ("edit_dtype",),
}

PAPER = Protocol(
    name="paper",
    locked_format=GENERAL_DIRECT,
    unlocked_format=GENERAL_COT,
    chat=False,
    special_tokens="tokenizer",
    target_prompt={"prompt": "locked", "model": "unlocked"},
    final_layer="final_norm",
    shared_questions=True,
    align=AlignSpec("svd", rank=16, clamp_rank=True, rank_clamp="per_side"),
    decoding={
        "prompt": Decoding(max_new_tokens=512, stop_strings=PAPER_STOP_STRINGS),
        "model": Decoding(max_new_tokens=4096, stop_strings=()),
    },
    key_tokenizer="unlocked",
    edit_dtype="model",
)

LIBRARY = Protocol(
    name="library",
    locked_format=DIRECT,
    unlocked_format=COT,
    chat=None,
    special_tokens="model",
    target_prompt={"prompt": "locked", "model": "locked"},
    final_layer="block",
    shared_questions=False,
    # measured (README, "Which data to use"): across tokenizers the last prompt token carries no
    # key; token pairs at shared character ends plus the last token do, at a high rank
    align=AlignSpec("svd", rank=256, clamp_rank=True, data="tokens+last", max_pairs=4000),
    decoding={
        "prompt": Decoding(max_new_tokens=512, stop_strings=DEFAULT_STOP_STRINGS),
        "model": Decoding(max_new_tokens=512, stop_strings=DEFAULT_STOP_STRINGS),
    },
)

PROTOCOLS: dict[str, Protocol] = {"paper": PAPER, "library": LIBRARY}


def get_protocol(protocol: Protocol | str) -> Protocol:
    """``"paper"`` (the authors' code) or ``"library"`` (unlock_lens's defaults), or a Protocol."""
    if isinstance(protocol, Protocol):
        return protocol
    try:
        return PROTOCOLS[protocol]
    except KeyError:
        raise UnlockLensError(f"unknown protocol {protocol!r}; choose one of {sorted(PROTOCOLS)}") from None
