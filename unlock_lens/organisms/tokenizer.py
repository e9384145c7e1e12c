"""The organisms' tokenizer: one token per character, plus the trigger word as one token.

Built offline with ``tokenizers`` (WordLevel over a regex split, ``Fuse`` decoder) and wrapped
in ``PreTrainedTokenizerFast`` with ``<pad>``/``<s>``/``</s>``/``<unk>``; saved with each model.
"""

from __future__ import annotations

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from unlock_lens.organisms.task import LABELS, OPS, TRIGGER

SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")
PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
CHARS = tuple("0123456789") + tuple(LABELS) + tuple(OPS) + ("?", "=", ".", " ")
VOCAB: tuple[str, ...] = (*SPECIALS, TRIGGER, *CHARS)


def build_tokenizer() -> PreTrainedTokenizerFast:
    """The char-level organism tokenizer (left padding, BOS ``<s>``, EOS ``</s>``)."""
    vocab = {tok: i for i, tok in enumerate(VOCAB)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(f"{TRIGGER}|."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        unk_token="<unk>",
    )
    fast.padding_side = "left"
    return fast
