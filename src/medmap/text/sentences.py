"""Report sentence splitting: MG-3D's rule for sentence-level text features.

A report is cut into *sentences* at sentence-ending punctuation (``.``, ``!``, ``?`` followed by
whitespace or the end of the text) and at blank lines; every sentence is then cut again at ``;``
and ``,``.  Punctuation inside parentheses or brackets never cuts, so ``"segment VII (right
lobe, near the dome)"`` stays whole.  A full stop does not end a sentence when it belongs to

* a decimal or thousands number (``"2.5 cm"``, ``"1,200"``; likewise a comma between digits),
* a known abbreviation (``approx.``, ``e.g.``, ``i.e.``, ``Dr.``, ``vs.``, ``cf.``, ``et al.``;
  ``etc.`` only when the next word is lowercase),
* an enumerator at the start of a sentence (``"1. Hepatic cyst."``; the ``"1."`` is dropped),

and ``?``/``!`` before any word (``"? metastasis"``) does not cut either.  Fragments are stripped
of surrounding whitespace, bullets and trailing ``. , ; :``; a fragment with no letter or digit is
dropped, so the result never holds empty or pure-punctuation pieces.  A line break ends a sentence
only before a list item (``"1. "``, ``"2) "``, ``"- "``, ``"* "``); otherwise it counts as a space
(reports are often hard-wrapped).  List enumerators and bullets are stripped from fragments.

Example:
    >>> split_sentences("A 23 mm lesion (right lobe, near the dome) is bright on T2WI; "
    ...                 "it enhances, filling in late. Size 2.5 cm vs. 1.8 cm previously.")
    ['A 23 mm lesion (right lobe, near the dome) is bright on T2WI', 'it enhances', \
'filling in late', 'Size 2.5 cm vs. 1.8 cm previously']
"""

from __future__ import annotations

import re

__all__ = ["split_sentences", "sentence_spans", "ABBREVIATIONS"]

# Lower-case, without the final full stop. These never end a sentence. (Not "MR", "MS" or
# single letters such as "V": in reports they often do end one - "... compared with prior MR.")
ABBREVIATIONS: frozenset[str] = frozenset(
    {
        "approx", "appr", "e.g", "eg", "i.e", "ie", "dr", "drs", "prof",
        "vs", "cf", "viz", "al", "fig", "figs", "incl", "resp", "ref", "pt", "pts",
    }
)
# These end a sentence only when the next word starts with an upper-case letter.
_WEAK_ABBREVIATIONS = frozenset({"etc"})

_OPEN = "([{"
_CLOSE = {")": "(", "]": "[", "}": "{"}
_TERMINAL = ".!?"
_TRAILING_CLOSERS = ")]}\"'\u201d\u2019"
_STRIP_TRAILING = " \t\r\n.,;:"
# (used with pattern.match(text, pos): anchored at pos, so no "^")
_LEADING_JUNK = re.compile(r"(?:[-*\u2022\u2013\u2014>]+\s*)+")
_ENUMERATOR = re.compile(r"\(?(?:\d{1,2}|[a-zA-Z])[.)]\s+")
_LIST_ITEM = re.compile(r"[ \t]*(?:\(?\d{1,2}[.)]|[-*\u2022\u2013\u2014])\s")
_WORD_BEFORE = re.compile(r"([A-Za-z][A-Za-z.]*)$")
_ALNUM = re.compile(r"[^\W_]")


def _enclosed(text: str) -> list[bool]:
    """Per character: is it strictly inside a *matched* pair of brackets?

    Unmatched brackets (``"1) liver"``, a stray ``"("``) are ignored so they cannot silence every
    split after them.
    """
    depth_delta = [0] * (len(text) + 1)
    stack: list[tuple[str, int]] = []
    for i, ch in enumerate(text):
        if ch in _OPEN:
            stack.append((ch, i))
        elif ch in _CLOSE:
            # pop to the nearest matching opener; openers skipped over stay unmatched
            for j in range(len(stack) - 1, -1, -1):
                if stack[j][0] == _CLOSE[ch]:
                    start = stack[j][1]
                    del stack[j:]
                    depth_delta[start + 1] += 1
                    depth_delta[i] -= 1
                    break
    inside, depth = [], 0
    for i in range(len(text)):
        depth += depth_delta[i]
        inside.append(depth > 0)
    return inside


def _is_abbreviation(text: str, dot: int) -> bool:
    """Does the full stop at ``text[dot]`` close a known abbreviation?"""
    m = _WORD_BEFORE.search(text, 0, dot)
    if not m:
        return False
    word = m.group(1).lower().lstrip(".")
    if word in ABBREVIATIONS:
        return True
    if word in _WEAK_ABBREVIATIONS:
        nxt = re.compile(r"\s*(\S)").match(text, dot + 1)
        return bool(nxt) and not nxt.group(1).isupper()
    return False


def _sentence_ends(text: str, inside: list[bool]) -> list[int]:
    """Exclusive end offsets of the sentences (not including the final one)."""
    ends: list[int] = []
    start = 0
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "\n":
            # blank line (only whitespace up to the next newline) -> paragraph break
            j = i + 1
            while j < n and text[j] in " \t\r":
                j += 1
            if j < n and text[j] == "\n" and not inside[i]:
                ends.append(i)
                start = j
                i = j + 1
                continue
            # a new list item ("1. ...", "- ...") on the next line starts a new sentence
            if not inside[i] and _LIST_ITEM.match(text, i + 1):
                ends.append(i)
                start = i + 1
                i += 1
                continue
        if ch in _TERMINAL and not inside[i]:
            j = i
            while j < n and text[j] in _TERMINAL:
                j += 1
            while j < n and text[j] in _TRAILING_CLOSERS:
                j += 1
            if j == n or text[j].isspace():
                if _is_boundary(text, start, i, j):
                    ends.append(j)
                    start = j
                i = j
                continue
            i = j
            continue
        i += 1
    return ends


def _is_boundary(text: str, start: int, i: int, j: int) -> bool:
    """Is the punctuation run ``text[i:j]`` (sentence started at ``start``) a sentence end?"""
    head = text[start:i]
    if not _ALNUM.search(head):  # "? metastasis", "... "
        return False
    if text[i] == "." and j == i + 1:
        if _is_abbreviation(text, i):
            return False
        if re.fullmatch(r"\s*\(?(?:\d{1,2}|[A-Za-z])", head):  # "1. Hepatic cyst"
            return False
    return True


def _clause_spans(text: str, start: int, end: int, inside: list[bool]) -> list[tuple[int, int]]:
    """Cut ``text[start:end]`` at ``;`` and ``,`` outside brackets (not inside numbers)."""
    spans, s = [], start
    for k in range(start, end):
        ch = text[k]
        if ch not in ";," or inside[k]:
            continue
        if ch == "," and 0 < k < len(text) - 1 and text[k - 1].isdigit() and text[k + 1].isdigit():
            continue  # 1,200 / 2,5 cm
        spans.append((s, k))
        s = k + 1
    spans.append((s, end))
    return spans


def _tidy(text: str, s: int, e: int) -> tuple[int, int] | None:
    """Shrink ``[s, e)`` to its content; None when nothing word-like is left."""
    while s < e and text[s].isspace():
        s += 1
    m = _LEADING_JUNK.match(text, s, e)
    if m:
        s = m.end()
    m = _ENUMERATOR.match(text, s, e)
    if m and _ALNUM.search(text, m.end(), e):
        s = m.end()
    while e > s and text[e - 1] in _STRIP_TRAILING:
        if text[e - 1] == "." and _is_abbreviation(text, e - 1):
            break
        e -= 1
    if not _ALNUM.search(text, s, e):
        return None
    return s, e


def sentence_spans(report: str) -> list[tuple[int, int]]:
    """``(start, end)`` character offsets of the fragments :func:`split_sentences` returns.

    ``report[start:end]`` is exactly each fragment, so callers can map fragments back to text.
    """
    if not isinstance(report, str):
        raise TypeError(f"report must be a str, got {type(report).__name__}")
    inside = _enclosed(report)
    bounds = [0, *_sentence_ends(report, inside), len(report)]
    out: list[tuple[int, int]] = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        for s, e in _clause_spans(report, a, b, inside):
            span = _tidy(report, s, e)
            if span is not None:
                out.append(span)
    return out


def split_sentences(report: str, min_words: int = 1) -> list[str]:
    """Split a report into concise sentence fragments (MG-3D's rule; see the module docstring).

    Args:
        report: free-text report.
        min_words: fragments with fewer words are merged into the following fragment (or the
            previous one when last); the default 1 keeps the plain rule.

    Returns:
        Non-empty fragments in reading order (an empty list for a blank report).
    """
    spans = sentence_spans(report)
    if min_words <= 1 or not spans:
        return [report[s:e] for s, e in spans]
    merged: list[tuple[int, int]] = []
    pending: tuple[int, int] | None = None
    for s, e in spans:
        if pending is not None:
            s = pending[0]
            pending = None
        if len(report[s:e].split()) < min_words:
            pending = (s, e)
        else:
            merged.append((s, e))
    if pending is not None:
        if merged:
            merged[-1] = (merged[-1][0], pending[1])
        else:
            merged.append(pending)
    return [report[s:e] for s, e in merged]
