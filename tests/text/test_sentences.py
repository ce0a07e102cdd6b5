"""MG-3D's report sentence splitting on realistic radiology text."""

from __future__ import annotations

import random
import re

import pytest

from medmap.text.sentences import sentence_spans, split_sentences

LIVER = (
    "A 23 mm lesion in segment VII (right lobe, near the dome) is hyperintense on T2WI; it "
    "shows peripheral nodular enhancement, filling in on delayed images. No biliary dilatation. "
    "Size 2.5 cm vs. 1.8 cm previously."
)


def test_liver_report():
    assert split_sentences(LIVER) == [
        "A 23 mm lesion in segment VII (right lobe, near the dome) is hyperintense on T2WI",
        "it shows peripheral nodular enhancement",
        "filling in on delayed images",
        "No biliary dilatation",
        "Size 2.5 cm vs. 1.8 cm previously",
    ]


def test_brain_report_with_abbreviations_and_decimals():
    report = (
        "T2 FLAIR hyperintensity (approx. 4.5 x 3.2 cm) in the left frontal lobe; mild mass "
        "effect, no midline shift.\nNo restricted diffusion on DWI, i.e. ADC is not low. "
        "Findings discussed with Dr. Smith, e.g. regarding biopsy."
    )
    assert split_sentences(report) == [
        "T2 FLAIR hyperintensity (approx. 4.5 x 3.2 cm) in the left frontal lobe",
        "mild mass effect",
        "no midline shift",
        "No restricted diffusion on DWI",
        "i.e. ADC is not low",
        "Findings discussed with Dr. Smith",
        "e.g. regarding biopsy",
    ]


def test_numbered_findings_and_headings():
    report = (
        "FINDINGS:\n1. Hepatic cyst in segment V. 2. No ascites, no lymphadenopathy.\n\n"
        "IMPRESSION: Benign (Bosniak I) cyst; no follow-up needed."
    )
    assert split_sentences(report) == [
        "FINDINGS",
        "Hepatic cyst in segment V",
        "No ascites",
        "no lymphadenopathy",
        "IMPRESSION: Benign (Bosniak I) cyst",
        "no follow-up needed",
    ]


def test_bullets_numbers_and_sentence_ends():
    report = (
        "- Arterial phase hyperenhancement with washout.\n- Capsule present!\n"
        "Volume 1,200 mm3 (2,5 cm across). Compared with prior MR. Stable? Yes."
    )
    assert split_sentences(report) == [
        "Arterial phase hyperenhancement with washout",
        "Capsule present!",
        "Volume 1,200 mm3 (2,5 cm across)",
        "Compared with prior MR",
        "Stable?",
        "Yes",
    ]


def test_parentheses_kept_intact():
    inner = "(segments II, III; largest 12 mm. Stable)"
    parts = split_sentences(f"Multiple lesions {inner} with rim enhancement, no washout.")
    assert parts[0] == f"Multiple lesions {inner} with rim enhancement"
    assert parts[1] == "no washout"
    for p in parts:
        assert p.count("(") == p.count(")")


def test_decimals_are_never_split():
    report = "Lesion 2.5 cm, previously 1.8 cm. ADC 0.9 x 10-3 mm2/s. Measures .5 cm."
    parts = split_sentences(report)
    assert parts == ["Lesion 2.5 cm", "previously 1.8 cm", "ADC 0.9 x 10-3 mm2/s", "Measures .5 cm"]


def test_leading_question_mark_and_etc():
    assert split_sentences("? metastasis. Cysts, haemangiomas etc. are benign etc. No change.") == [
        "? metastasis",
        "Cysts",
        "haemangiomas etc. are benign etc",
        "No change",
    ]


def test_blank_and_punctuation_only_reports():
    for text in ("", "   ", "...", "; , .", "()", "-\n-"):
        assert split_sentences(text) == []


def test_unbalanced_brackets_do_not_silence_splitting():
    assert split_sentences("1) liver normal. 2) spleen normal, no ascites.") == [
        "liver normal",
        "spleen normal",
        "no ascites",
    ]
    assert split_sentences("Lesion (see prior. No ascites, no effusion.") == [
        "Lesion (see prior",
        "No ascites",
        "no effusion",
    ]


def test_spans_map_back_and_no_junk_pieces():
    rng = random.Random(0)
    alphabet = list("abc XYZ 12 .,;:!?()-\n") + ["2.5", "e.g.", "vs.", "Dr.", "  "]
    samples = [LIVER] + ["".join(rng.choice(alphabet) for _ in range(60)) for _ in range(300)]
    for text in samples:
        spans = sentence_spans(text)
        parts = split_sentences(text)
        assert parts == [text[s:e] for s, e in spans]
        assert all(e0 <= s1 for (_, e0), (s1, _) in zip(spans, spans[1:]))  # ordered, disjoint
        for p in parts:
            assert p == p.strip() and re.search(r"[^\W_]", p), (text, p)


def test_min_words_merges_short_fragments():
    report = "However, the lesion is stable. Liver, normal."
    assert split_sentences(report) == ["However", "the lesion is stable", "Liver", "normal"]
    assert split_sentences(report, min_words=2) == [
        "However, the lesion is stable",
        "Liver, normal",
    ]


def test_type_error():
    with pytest.raises(TypeError):
        split_sentences(None)  # type: ignore[arg-type]
