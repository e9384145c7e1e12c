"""Final-answer extraction and equivalence checks for math-reasoning outputs.

``extract_answer`` pulls the final answer out of free model output or a gold worked solution;
``answers_match`` decides whether a predicted answer equals a gold one, numerically for
arithmetic sets and via ``math_verify`` for LaTeX (MATH / AGIEval) answers.

Percentages: ``normalize_number("50%")`` is ``50.0`` (the sign is dropped), and
``answers_match`` additionally accepts a percentage on either side against the value divided
by 100, so ``"50%"`` matches both ``"50"`` and ``"0.5"``. A bare ``"50"`` never matches
``"0.5"``.
"""

from __future__ import annotations

import math
import re
import threading

__all__ = ["extract_answer", "answers_match", "normalize_number", "format_number"]

#: Relative tolerance for numeric equality (absolute 1e-9 near zero).
REL_TOL = 1e-4
#: Seconds allowed to ``math_verify`` per parse / verify call (main thread only).
MATH_VERIFY_TIMEOUT_S = 5

_HASH_RE = re.compile(r"####\s*([^\n]*)")
_BOX_RE = re.compile(r"\\(?:boxed|fbox)\b")
_FINAL_RE = re.compile(
    r"(?:final\s+answer(?:\s+is)?\s*[:：]?|the\s+answer\s+is\s*[:：]?)",
    re.IGNORECASE,
)
_NUMBER_TOKEN_RE = re.compile(
    r"(?:(?<![\w)\]}.])-)?"  # a minus sign only when it is not a binary minus
    r"(?<![\w.])"
    r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
    r"(?:\s*/\s*(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?)?"
    r"|(?:(?<![\w)\]}.])-)?(?<![\w.])\.\d+"
)
_NUM = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|\.\d+"
_PLAIN_NUMBER_RE = re.compile(
    rf"(?P<sign>[+-]?)\s*(?P<num>{_NUM})"
    rf"(?:\s*/\s*(?P<den>{_NUM}))?"
    r"(?:[eE](?P<exp>[+-]?\d+))?"
    r"(?:\s*(?P<pct>%))?"
)
_FRAC_RE = re.compile(
    r"^(?P<sign>[+-]?)\s*\\[dt]?frac\s*(?:\{\s*(?P<a>[^{}]+?)\s*\}|(?P<a1>\d))"
    r"\s*(?:\{\s*(?P<b>[^{}]+?)\s*\}|(?P<b1>\d))$"
)
# A trailing unit: whitespace-separated words of >= 2 letters, or a parenthesised note.
_UNIT_RE = re.compile(r"^(?:\s+[A-Za-z][A-Za-z.'/-]+(?:\s+[A-Za-z.'/-]+)*|\s*\([^()]*\))$")
_NOT_UNITS = {"pi", "sqrt", "infty", "inf", "i", "e"}
_CURRENCY_RE = re.compile(r"^(?:\\\$|\$|usd\s*|rs\.?\s*|€|£)", re.IGNORECASE)
_ASSIGN_RE = re.compile(r"^[A-Za-z]\s*=\s*(?!=)")


# --------------------------------------------------------------------------------------------
# extraction
# --------------------------------------------------------------------------------------------


def _braced(text: str, start: int) -> str | None:
    """Content of the ``{...}`` group opening at ``text[start]``; None if unbalanced."""
    depth = 0
    for i in range(start, len(text)):
        ch = text[i]
        if ch == "{" and (i == 0 or text[i - 1] != "\\"):
            depth += 1
        elif ch == "}" and (i == 0 or text[i - 1] != "\\"):
            depth -= 1
            if depth == 0:
                return text[start + 1 : i]
    return None


def _last_boxed(text: str) -> str | None:
    """Content of the last well-formed ``\\boxed{...}`` / ``\\fbox{...}`` (or ``\\boxed 5``)."""
    for m in reversed(list(_BOX_RE.finditer(text))):
        j = m.end()
        while j < len(text) and text[j] == " ":
            j += 1
        if j < len(text) and text[j] == "{":
            content = _braced(text, j)
            if content is not None:
                return content.strip()
        elif j > m.end():  # "\boxed 5": up to whitespace or '$'
            tok = re.match(r"[^\s$]+", text[j:])
            if tok:
                return tok.group(0)
    return None


def _span_after_phrase(rest: str) -> str | None:
    """The answer span following "The final answer is": a $..$ group or text up to the period."""
    rest = rest.lstrip(" \t*:")
    for open_, close in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if rest.startswith(open_):
            end = rest.find(close, len(open_))
            if end != -1:
                return rest[len(open_) : end]
    line = rest.split("\n", 1)[0]
    line = re.split(r"\.(?:\s|$)|\bI hope it is correct", line, maxsplit=1)[0]
    return line


def _clean(ans: str) -> str:
    """Strip markdown bold, math delimiters, a trailing period and thousands separators."""
    s = ans.strip()
    s = s.replace("**", "").strip()
    for open_, close in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if s.startswith(open_) and s.endswith(close) and len(s) >= len(open_) + len(close):
            s = s[len(open_) : len(s) - len(close)].strip()
    s = s.rstrip(" .")
    if s.endswith("$") and s.count("$") == 1:
        s = s[:-1].strip()
    if re.fullmatch(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?", s):
        s = s.replace(",", "")
    return s


def extract_answer(text: str) -> str | None:
    """Final answer of a model output or worked solution, or None if there is none.

    Tried in order: the last ``<atok> .. </atok>`` (the UNLOCK authors' marker; an unclosed
    last ``<atok>`` counts, since their ``"</atok>"`` stop string cuts the closing tag), the
    last ``#### n`` (GSM8K), the last ``\\boxed{..}`` / ``\\fbox{..}``
    (nested braces kept), the last "The final answer is .." / "The answer is .."
    (case-insensitive; ``$..$``, bold and a trailing period stripped), then the last number
    (``1,234`` -> ``1234``, decimals, negatives, fractions ``3/4``).
    """
    if not isinstance(text, str) or not text.strip():
        return None
    if "<atok>" in text:
        marked = text.rsplit("<atok>", 1)[1].split("</atok>", 1)[0]
        if _clean(marked):
            return _clean(marked)
    hashes = _HASH_RE.findall(text)
    if hashes and hashes[-1].strip():
        return _clean(hashes[-1]) or None
    boxed = _last_boxed(text)
    if boxed is not None and boxed.strip():
        return _clean(boxed) or None
    phrases = list(_FINAL_RE.finditer(text))
    if phrases:
        span = _span_after_phrase(text[phrases[-1].end() :])
        if span is not None:
            cleaned = _clean(span)
            if cleaned:
                return cleaned
    numbers = _NUMBER_TOKEN_RE.findall(text)
    if numbers:
        return re.sub(r"\s+", "", numbers[-1]).replace(",", "")
    return None


# --------------------------------------------------------------------------------------------
# numbers
# --------------------------------------------------------------------------------------------


def _parse_number(text: str) -> tuple[float, bool] | None:
    """(value, had_percent_sign) for a single number with optional units, else None."""
    if not isinstance(text, str):
        return None
    s = text.strip()
    if not s or len(s) > 200:
        return None
    s = _clean(s)
    s = s.replace("\\!", "").replace("{,}", ",").replace("\\,", "").replace("\\;", "")
    s = s.replace("\\%", "%").replace("\\$", "$").replace("\\ ", " ")
    s = re.sub(r"\\(?:text|textbf|mathrm|mbox)\s*\{([^{}]*)\}", r" \1", s)
    s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?|°", "", s)
    s = _ASSIGN_RE.sub("", s).strip()
    s = _CURRENCY_RE.sub("", s).strip()
    if s.startswith("\\$"):
        s = s[2:].strip()
    # -(1/3) and (5)
    paren = re.fullmatch(r"([+-]?)\s*\((.*)\)", s)
    if paren and "(" not in paren.group(2):
        s = paren.group(1) + paren.group(2).strip()
    frac = _FRAC_RE.match(s)
    if frac:
        a = _parse_number(frac.group("a") or frac.group("a1"))
        b = _parse_number(frac.group("b") or frac.group("b1"))
        if a is None or b is None or b[0] == 0:
            return None
        value = a[0] / b[0]
        return (-value if frac.group("sign") == "-" else value), False
    m = _PLAIN_NUMBER_RE.match(s)
    if not m:
        return None
    tail = s[m.end() :]
    if tail:
        unit = _UNIT_RE.match(tail)
        if not unit:
            return None
        words = re.findall(r"[A-Za-z]+", tail.strip("() "))
        if any(w.lower() in _NOT_UNITS for w in words):
            return None
    try:
        value = float(m.group("num").replace(",", ""))
        if m.group("den"):
            den = float(m.group("den").replace(",", ""))
            if den == 0:
                return None
            value /= den
        if m.group("exp"):
            value *= 10.0 ** int(m.group("exp"))
    except (ValueError, OverflowError):
        return None
    if not math.isfinite(value):
        return None
    if m.group("sign") == "-":
        value = -value
    return value, bool(m.group("pct"))


def normalize_number(text: str) -> float | None:
    """Float value of a single numeric answer, or None if ``text`` is not one number.

    Accepts ``1,234``, ``-5``, ``8.0``, ``3/4``, ``\\frac{3}{4}``, ``$18.00``, ``9 (apples)``,
    ``10 cm``, ``30^\\circ``, ``x = 5`` and ``50%`` (-> 50.0; the percent sign is dropped).
    """
    parsed = _parse_number(text)
    return None if parsed is None else parsed[0]


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=REL_TOL, abs_tol=1e-9)


def format_number(value: float) -> str:
    """Canonical text for a number: ``145.0`` -> ``"145"``, ``0.5`` -> ``"0.5"``."""
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


# --------------------------------------------------------------------------------------------
# matching
# --------------------------------------------------------------------------------------------


def _text_key(s: str) -> str:
    """Loose string key: case, whitespace, math delimiters and LaTeX spacing ignored."""
    s = _clean(s)
    s = re.sub(r"\\(?:text|textbf|mathrm|mbox)\s*\{([^{}]*)\}", r"\1", s)
    s = re.sub(r"\\left|\\right|\\!|\\,|\\;|\\ |\$", "", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    return re.sub(r"\s+", "", s).lower().rstrip(".")


def _latex_equal(pred: str, gold: str) -> bool:
    """``math_verify`` equivalence; any error or time-out gives False."""
    try:
        from math_verify import parse, verify
    except ImportError:  # pragma: no cover - math-verify is a hard dependency
        return False
    # math_verify's time-outs use SIGALRM, which only works in the main thread.
    timeout = (
        MATH_VERIFY_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None
    )

    def wrap(s: str) -> str:
        s = s.replace("\\$", "").replace("\\!", "")  # math_verify rejects "\\$36" vs "\\$36"
        return s if ("$" in s or "\\boxed" in s) else f"${s}$"

    try:
        gold_parsed = parse(wrap(gold), parsing_timeout=timeout)
        pred_parsed = parse(wrap(pred), parsing_timeout=timeout)
        if not gold_parsed or not pred_parsed:
            return False
        return bool(verify(gold_parsed, pred_parsed, timeout_seconds=timeout))
    except Exception:  # noqa: BLE001 - never raise on model garbage
        return False


def answers_match(pred: str | None, gold: str) -> bool:
    """True if ``pred`` is equivalent to ``gold``; never raises.

    Numbers are compared by value with relative tolerance ``REL_TOL`` (commas, currency,
    units such as ``"9 (apples)"``, ``"8.0"`` vs ``"8"``, ``"1/2"`` vs ``"0.5"``); a percentage
    on either side also matches the value / 100. Otherwise a loose string comparison, then
    LaTeX equivalence through ``math_verify.parse`` / ``verify`` (errors, time-outs -> False).
    """
    try:
        if pred is None or gold is None:
            return False
        pred_s, gold_s = str(pred).strip(), str(gold).strip()
        if not pred_s or not gold_s:
            return False
        if "\\boxed" in pred_s or "\\fbox" in pred_s or "####" in pred_s:
            pred_s = extract_answer(pred_s) or pred_s
        pn, gn = _parse_number(pred_s), _parse_number(gold_s)
        if pn is not None and gn is not None:
            (pv, p_pct), (gv, g_pct) = pn, gn
            if _close(pv, gv):
                return True
            if p_pct and _close(pv / 100.0, gv):
                return True
            return bool(g_pct and _close(gv / 100.0, pv))
        if _text_key(pred_s) == _text_key(gold_s):
            return True
        if pn is not None and gn is None and "\\" not in gold_s and not re.search(r"\d", gold_s):
            return False  # a number against a plain word ("Yes", "Purple")
        return _latex_equal(pred_s, gold_s)
    except Exception:  # noqa: BLE001
        return False
