"""Which token positions of two tokenisations of the same text can be paired (pure functions).

Two models with different tokenizers read the same text in different pieces. A pair of
positions is comparable when both tokens *end* at the same character of the text the two
prompts share: each model's state there has read exactly the same text. Template tokens
outside the shared text are not paired.

>>> shared_token_ends("ab cd", [(0, 2), (2, 5)], "xab cd", [(0, 1), (1, 3), (3, 4), (4, 6)])
[(0, 1), (1, 3)]
"""

from __future__ import annotations

from collections.abc import Sequence
from difflib import SequenceMatcher

Span = tuple[int, int]


def common_block(src_text: str, tgt_text: str) -> tuple[int, int, int]:
    """``(start in src, start in tgt, length)`` of the longest text the two prompts share."""
    match = SequenceMatcher(None, src_text, tgt_text, autojunk=False).find_longest_match(
        0, len(src_text), 0, len(tgt_text))
    return match.a, match.b, match.size


def shared_token_ends(
    src_text: str, src_spans: Sequence[Span], tgt_text: str, tgt_spans: Sequence[Span]
) -> list[tuple[int, int]]:
    """Token index pairs ``(i_src, i_tgt)`` whose tokens lie inside the two texts' longest common
    block and end at the same character of it. Same text and tokenizer: every non-special token
    pairs with itself."""
    return block_token_ends(src_spans, tgt_spans, *common_block(src_text, tgt_text))


def block_token_ends(
    src_spans: Sequence[Span], tgt_spans: Sequence[Span], src_start: int, tgt_start: int, size: int
) -> list[tuple[int, int]]:
    """Token index pairs ``(i_src, i_tgt)`` whose tokens lie inside one shared block of text
    (``size`` characters from ``src_start`` in the source text, from ``tgt_start`` in the target
    text) and end at the same character of it. A token that starts before the block (e.g. one
    that merges a prompt's last character with a continuation's first) is not paired.

    >>> block_token_ends([(0, 3), (3, 5), (5, 7)], [(0, 2), (2, 5), (5, 6), (6, 8)], 3, 4, 4)
    [(1, 2), (2, 3)]
    """

    def inside(spans: Sequence[Span], start: int) -> dict[int, int]:
        return {end - start: i for i, (s, end) in enumerate(spans)
                if end > s and s >= start and end <= start + size}

    src_ends, tgt_ends = inside(src_spans, src_start), inside(tgt_spans, tgt_start)
    return [(i, tgt_ends[e]) for e, i in sorted(src_ends.items()) if e in tgt_ends]


def word_end_prefixes(text: str) -> list[str]:
    """Every prefix of ``text`` that ends at the end of a word (a non-space followed by a space
    or the end), stripped of surrounding whitespace.

    >>> word_end_prefixes("Tom has  3 apples.")
    ['Tom', 'Tom has', 'Tom has  3', 'Tom has  3 apples.']
    """
    text = text.strip()
    return [text[: i + 1] for i, ch in enumerate(text)
            if not ch.isspace() and (i + 1 == len(text) or text[i + 1].isspace())]
