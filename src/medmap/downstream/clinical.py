"""Clinical efficacy of generated reports: does the report state the right diagnosis?

BLEU rewards templated wording even when the diagnosis is wrong. Report-generation papers add
clinical efficacy: extract the finding from each generated report and score it against the
label. The extractor here is a rule over the class knowledge's diagnosis names
(``configs/class-knowledge.yaml``: ``organs.<organ>.classes.<class>.names``, e.g.
"hepatocellular carcinoma (HCC)", "HCC", "meningioma", "metastatic disease"):

* the text is split into sentences; a sentence with a negation cue (``no``, ``not``,
  ``without``, ``negative for``, ``rather than``) is skipped ("No evidence of hepatic abscess");
* every class name (and the abbreviation inside parentheses) is matched as whole words,
  case-insensitively;
* a sentence starting with "Impression" wins over the others; within the chosen sentences the
  earliest match wins, the longest name on a tie;
* no match: no finding (counted as wrong; the share of reports with a finding is reported).

The same extractor on the true reports gives its ceiling: where the true report names no
diagnosis (many per-sequence reports; the simulator's indeterminate impressions), no generated
report can be scored right by it either.

Example:
    >>> ex = DiagnosisExtractor.for_organ("liver")
    >>> ex("Solitary lesion, 34 mm. Impression: hepatocellular carcinoma (HCC).")
    'hepatocellular_carcinoma'
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["DiagnosisExtractor", "clinical_efficacy", "EXTRACTOR_NAME"]

EXTRACTOR_NAME = "rule: class-knowledge diagnosis names, negated sentences skipped"
_NEGATION = re.compile(r"\b(no|not|without|negative for|rather than|unlikely|excluded?)\b")
_SENTENCE = re.compile(r"(?<=[.;!?])\s+|\n+")


@dataclass(frozen=True)
class DiagnosisExtractor:
    """Class of the diagnosis a report states (see the module doc); ``None``: no finding."""

    classes: tuple[str, ...]
    patterns: tuple[tuple[str, re.Pattern[str], int], ...]     # (class, regex, name length)

    @classmethod
    def from_names(cls, names: Mapping[str, Sequence[str]]) -> DiagnosisExtractor:
        """From ``class -> diagnosis names``; an abbreviation in parentheses also counts."""
        pats: list[tuple[str, re.Pattern[str], int]] = []
        for c, ns in names.items():
            terms: set[str] = set()
            for n in ns:
                n = n.strip().lower()
                terms.add(re.sub(r"\s*\([^)]*\)", "", n).strip())
                terms.update(m.strip() for m in re.findall(r"\(([^)]+)\)", n))
                if "(" not in n:
                    terms.add(n)
            for t in sorted(x for x in terms if x):
                rx = re.compile(r"(?<![\w-])" + re.escape(t).replace(r"\ ", r"\s+") +
                                r"(?![\w-])")
                pats.append((c, rx, len(t)))
        return cls(tuple(names), tuple(pats))

    @classmethod
    def for_organ(cls, organ: str, knowledge=None) -> DiagnosisExtractor:
        """The extractor of ``organ`` from the class knowledge (the shipped file by default)."""
        from medmap.text.knowledge import load_class_knowledge

        ck = knowledge if knowledge is not None else load_class_knowledge(organ=organ)
        return cls.from_names({c: ck.names[c] for c in ck.classes})

    def __call__(self, text: str | None) -> str | None:
        if not text:
            return None
        sentences = [s.strip() for s in _SENTENCE.split(text.lower()) if s.strip()]
        kept = [s for s in sentences if not _NEGATION.search(s)]
        impression = [s for s in kept if s.startswith("impression")]
        for group in (impression, kept):
            best: tuple[int, int, str] | None = None      # (sentence order + position, -len)
            for k, s in enumerate(group):
                for c, rx, n in self.patterns:
                    m = rx.search(s)
                    if m:
                        key = (k * 100000 + m.start(), -n, c)
                        if best is None or key < best:
                            best = key
            if best is not None:
                return best[2]
        return None


def _scores(pred: Sequence[str | None], labels: Sequence[str],
            classes: Sequence[str]) -> dict[str, Any]:
    from sklearn.metrics import f1_score

    y = np.array(list(labels), dtype=object)
    p = np.array(["<none>" if x is None else x for x in pred], dtype=object)
    n = len(y)
    from medmap.metrics import mean_ci

    return {"n": n,
            "accuracy": float((p == y).mean()) if n else None,
            "accuracy_ci": mean_ci((p == y).astype(float).tolist()),
            "chance": 1.0 / len(classes) if classes else None,
            "macro_f1": float(f1_score(y, p, labels=list(classes), average="macro",
                                       zero_division=0)) if n else None,
            "with_finding": float((p != "<none>").mean()) if n else None}


def clinical_efficacy(generated: Sequence[str], references: Sequence[str],
                      labels: Sequence[str], classes: Sequence[str],
                      extractor: DiagnosisExtractor) -> dict[str, Any]:
    """Accuracy and macro F1 (over ``classes``) of the diagnosis ``extractor`` reads from the
    generated reports, against ``labels``; ``ceiling``: the same on the true reports.
    Unlabelled units (label None) are left out."""
    keep = [i for i, lab in enumerate(labels) if lab is not None]
    gen = [extractor(generated[i]) for i in keep]
    ref = [extractor(references[i]) for i in keep]
    lab = [labels[i] for i in keep]
    return {"extractor": EXTRACTOR_NAME, **_scores(gen, lab, classes),
            "ceiling": _scores(ref, lab, classes)}
