"""Behaviour scorers: one pure function ``text -> float`` per kind, higher = more of the behaviour.

Maintained libraries where one exists, short rules otherwise:

- ``sentiment``: VADER (``vaderSentiment``), the mean compound score of the sentences (VADER's
  authors' advice for text longer than a sentence: the compound of a whole paragraph saturates
  towards ±1 with length); ``polarity = "negative"`` negates it.
- ``language``: ``py3langid`` with its bundled model, the normalised probability of ``language``
  (an ISO 639-1 code such as ``"fr"``).
- ``register``: ``textstat``'s Coleman–Liau grade level (letters per word and words per sentence;
  chosen because it needs no syllable dictionary, which ``textstat`` would download) minus
  ``INFORMAL_PENALTY`` grade levels per informal marker per word (contractions, slang, ``!``).
- ``step_markers``: how many kinds of step marker appear (numbered or ``Step n`` lines, first /
  next / then / finally, therefore / thus, "step by step", "the answer is").
- ``brevity``: minus the word count (higher = briefer); an empty output is not brief.
- ``list_items``: the share of non-empty lines that are list items (``-``, ``*``, ``•``, ``–``, ``1.``).
- ``question_end``: 1.0 when the last sentence holds a question mark, else 0.0.
- ``uppercase``: the share of cased letters that are upper case.
- ``lexicon``: the share of words in ``words`` (a plural ``-s``/``-es`` counts as the word).

:func:`make_scorer` binds a kind to the parameters of its ``axes.toml`` entry; :data:`SCORER_PARAMS`
says which parameters each kind takes.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Callable, Mapping
from functools import cache, partial
from types import MappingProxyType
from typing import Any

from unlock_lens.errors import UnlockLensError

Scorer = Callable[[str], float]

_WORD = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)*")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


def words(text: str) -> list[str]:
    """The words of ``text`` (letters, with inner apostrophes: ``don't``, ``cap'n``), lower case."""
    return [w.lower().replace("’", "'") for w in _WORD.findall(text)]


def sentences(text: str) -> list[str]:
    """Sentences split at ``.``/``!``/``?`` followed by white space, and at line breaks."""
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


# --- sentiment (VADER) --------------------------------------------------------------------


@cache
def _vader() -> Any:
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def sentiment(text: str, polarity: str = "positive") -> float:
    """Mean VADER compound score of the sentences (in [-1, 1]); negated for ``"negative"``."""
    parts = sentences(text)
    mean = statistics.fmean(_vader().polarity_scores(s)["compound"] for s in parts) if parts else 0.0
    return mean if polarity == "positive" else 0.0 - mean


# --- language (py3langid) -----------------------------------------------------------------


@cache
def _language_identifier() -> Any:
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def language_probability(text: str, language: str) -> float:
    """py3langid's normalised probability that ``text`` is in ``language`` (ISO 639-1)."""
    return dict(_language_identifier().rank(text)).get(language, 0.0)


# --- register (textstat + informal markers) -----------------------------------------------

#: grade levels taken off per informal marker per word (one contraction in ten words: -5)
INFORMAL_PENALTY = 50.0
_CONTRACTION = re.compile(r"^(?:\w+n't|\w+'(?:re|ve|ll|m|d)|(?:it|that|there|here|what|let|he|she|who)'s)$")
SLANG = frozenset({
    "gonna", "wanna", "gotta", "kinda", "sorta", "yeah", "yep", "yup", "nope", "hey", "hi", "lol",
    "omg", "btw", "dude", "guys", "cool", "awesome", "stuff", "okay", "ok", "totally", "super",
    "wow", "ya", "y'all", "ain't",
})


def informal_markers(text: str) -> int:
    """Contractions, slang words and exclamation marks in ``text``."""
    ws = words(text)
    return sum(1 for w in ws if w in SLANG or _CONTRACTION.match(w)) + text.count("!")


def register(text: str) -> float:
    """Coleman–Liau grade level minus ``INFORMAL_PENALTY`` per informal marker per word."""
    import textstat

    n = len(words(text))
    if n == 0:
        return 0.0
    return float(textstat.coleman_liau_index(text)) - INFORMAL_PENALTY * informal_markers(text) / n


# --- rules --------------------------------------------------------------------------------

#: marker kind -> pattern; the cot score counts kinds present, so one marker repeated in a long
#: answer ("then ... then ...") does not pass for reasoning
STEP_MARKERS: Mapping[str, re.Pattern[str]] = MappingProxyType({
    "numbered": re.compile(r"^\s*(?:step\s*\d+\b|\d+[.)]\s)", re.IGNORECASE | re.MULTILINE),
    "step_by_step": re.compile(r"\bstep[- ]by[- ]step\b|\bstep\s*\d+\b", re.IGNORECASE),
    "first": re.compile(r"\b(?:first|firstly|to begin|to start)\b", re.IGNORECASE),
    "next": re.compile(r"\b(?:next|then|second|secondly|after that)\b", re.IGNORECASE),
    "finally": re.compile(r"\b(?:finally|lastly|in the end)\b", re.IGNORECASE),
    "therefore": re.compile(r"\b(?:therefore|thus|hence|so we|this means|as a result)\b", re.IGNORECASE),
    "answer": re.compile(r"\b(?:the (?:final )?answer is|in conclusion|to conclude)\b", re.IGNORECASE),
    "reasoning": re.compile(r"\b(?:let's think|let me think|reasoning|let's break|break (?:it|this) down)\b",
                            re.IGNORECASE),
})


def step_markers(text: str) -> float:
    """How many kinds of :data:`STEP_MARKERS` occur in ``text``."""
    text = text.replace("’", "'")
    return float(sum(1 for pattern in STEP_MARKERS.values() if pattern.search(text)))


#: what an output without a word scores on ``brevity``: as absent as a long answer, so that a
#: key which only makes the model stop at once cannot look brief
EMPTY_BREVITY = -100.0


def brevity(text: str) -> float:
    """Minus the word count: higher = briefer; an empty output scores :data:`EMPTY_BREVITY`."""
    n = len(words(text))
    return -float(n) if n else EMPTY_BREVITY


_LIST_ITEM = re.compile(r"^\s*(?:[-*•–+]|\d+[.)])\s+\S")


def list_items(text: str) -> float:
    """Share of the non-empty lines that are list items (``- x``, ``* x``, ``• x``, ``1. x``)."""
    lines = [line for line in text.splitlines() if line.strip()]
    return sum(1 for line in lines if _LIST_ITEM.match(line)) / len(lines) if lines else 0.0


def question_end(text: str) -> float:
    """1.0 when the last sentence holds a question mark (trailing emoji / quotes ignored)."""
    parts = sentences(re.sub(r"[^\w.!?]+$", "", text))
    return 1.0 if parts and "?" in parts[-1] else 0.0


def uppercase(text: str) -> float:
    """Share of cased letters that are upper case (0 when there are none)."""
    cased = [c for c in text if c.isupper() or c.islower()]
    return sum(1 for c in cased if c.isupper()) / len(cased) if cased else 0.0


def lexicon(text: str, words_: frozenset[str]) -> float:
    """Share of the words of ``text`` in ``words_`` (``-s`` / ``-es`` plurals count)."""
    ws = words(text)
    hits = sum(1 for w in ws if w in words_ or w.removesuffix("s") in words_ or w.removesuffix("es") in words_)
    return hits / len(ws) if ws else 0.0


# --- the registry of kinds ----------------------------------------------------------------

#: scorer kind -> the parameters its axes.toml entry must give (and no others)
SCORER_PARAMS: Mapping[str, frozenset[str]] = MappingProxyType({
    "sentiment": frozenset({"polarity"}),
    "language": frozenset({"language"}),
    "register": frozenset(),
    "step_markers": frozenset(),
    "brevity": frozenset(),
    "list_items": frozenset(),
    "question_end": frozenset(),
    "uppercase": frozenset(),
    "lexicon": frozenset({"words"}),
})
_FUNCTIONS: Mapping[str, Callable[..., float]] = MappingProxyType({
    "sentiment": sentiment, "language": language_probability, "register": register,
    "step_markers": step_markers, "brevity": brevity, "list_items": list_items,
    "question_end": question_end, "uppercase": uppercase, "lexicon": lexicon,
})


def check_params(kind: str, params: Mapping[str, Any], where: str) -> None:
    """Raise :class:`UnlockLensError` naming ``where`` when ``kind`` is unknown or its parameters
    are missing, unexpected or of the wrong type."""
    if kind not in SCORER_PARAMS:
        raise UnlockLensError(f"{where}: unknown scorer {kind!r}; use one of {sorted(SCORER_PARAMS)}")
    missing, extra = SCORER_PARAMS[kind] - set(params), set(params) - SCORER_PARAMS[kind]
    if missing or extra:
        raise UnlockLensError(
            f"{where}: scorer {kind!r} takes the parameters {sorted(SCORER_PARAMS[kind])}; "
            f"missing {sorted(missing)}, unexpected {sorted(extra)}: fix the entry"
        )
    if kind == "sentiment" and params["polarity"] not in ("positive", "negative"):
        raise UnlockLensError(f"{where}: polarity must be 'positive' or 'negative', not {params['polarity']!r}")
    if kind == "language" and not (isinstance(params["language"], str) and re.fullmatch(r"[a-z]{2,3}", params["language"])):
        raise UnlockLensError(f"{where}: language must be an ISO 639-1 code such as 'fr', not {params['language']!r}")
    if kind == "lexicon":
        given = params["words"]
        bad = [w for w in given if not isinstance(w, str) or words(w) != [w]] if isinstance(given, list | tuple) else given
        if not given or bad:
            raise UnlockLensError(
                f"{where}: words must be a non-empty list of single lower-case words (letters, inner "
                f"apostrophes); these are not: {bad!r}"
            )


def make_scorer(kind: str, params: Mapping[str, Any] | None = None) -> Scorer:
    """The scorer ``text -> float`` of ``kind`` with its parameters bound."""
    params = dict(params or {})
    check_params(kind, params, f"scorer {kind!r}")
    if kind == "language" and params["language"] not in _language_identifier().labels:
        raise UnlockLensError(
            f"language {params['language']!r} is not one py3langid knows; use an ISO 639-1 code such as 'fr'"
        )
    if kind == "lexicon":
        return partial(lexicon, words_=frozenset(params["words"]))
    return partial(_FUNCTIONS[kind], **params)
