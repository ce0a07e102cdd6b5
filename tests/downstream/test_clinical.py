"""Clinical efficacy of generated reports: the diagnosis extractor on reports whose answer is
known, the scores against a hand computation, and `medmap generate-report` printing them."""

import json

import pytest

from medmap.cli import main
from medmap.data.vocab import get_organ
from medmap.downstream.clinical import DiagnosisExtractor, clinical_efficacy

LIVER = get_organ("liver").classes


@pytest.fixture(scope="module")
def liver():
    return DiagnosisExtractor.for_organ("liver")


@pytest.mark.parametrize("text,want", [
    ("Solitary focal liver lesion, 34 mm in segment V. Impression: hepatocellular carcinoma "
     "(HCC).", "hepatocellular_carcinoma"),
    ("Imaging features are typical of hepatic cyst.", "hepatic_cyst"),
    ("Two lesions. Impression: intrahepatic cholangiocarcinoma (ICC).",
     "intrahepatic_cholangiocarcinoma"),
    ("findings consistent with fnh", "focal_nodular_hyperplasia"),                 # abbreviation
    ("No evidence of hepatic abscess. Findings are consistent with hepatic hemangioma.",
     "hepatic_hemangioma"),                                                        # negation
    ("Liver metastases are likely. Impression: hepatic cyst.", "hepatic_cyst"),    # impression wins
    ("Indeterminate focal liver lesion; further characterisation recommended.", None),
    ("", None),
])
def test_extractor_known_answers(liver, text, want):
    assert liver(text) == want


def test_extractor_brain_names():
    brain = DiagnosisExtractor.for_organ("brain")
    assert brain("Multiple enhancing lesions, in keeping with metastatic disease.") == "malignant"
    assert brain("Dural-based extra-axial mass. Impression: meningioma.") == "benign"
    assert brain("Solitary extra-axial lesion displacing the adjacent brain.") is None


def test_scores_against_hand_computation(liver):
    classes = ("a", "b", "c")
    ex = DiagnosisExtractor.from_names({"a": ["alpha"], "b": ["beta"], "c": ["gamma"]})
    gen = ["alpha", "beta", "alpha", "nothing"]
    ref = ["alpha", "beta", "gamma", "gamma"]
    labels = ["a", "b", "c", "c"]
    r = clinical_efficacy(gen, ref, labels, classes, ex)
    assert r["n"] == 4 and r["accuracy"] == pytest.approx(0.5)
    # per class F1: a: P=1/2 R=1 -> 2/3; b: 1; c: P=0 R=0 -> 0; macro 5/9
    assert r["macro_f1"] == pytest.approx(5 / 9)
    assert r["with_finding"] == pytest.approx(0.75)
    assert r["ceiling"]["accuracy"] == 1.0 and r["ceiling"]["macro_f1"] == 1.0
    none_left = clinical_efficacy(gen, ref, [None, "b", None, "c"], classes, ex)
    assert none_left["n"] == 2 and none_left["accuracy"] == pytest.approx(0.5)


def test_generate_report_prints_clinical_accuracy(pretrained, tiny_sim, vcache, tmp_path, capsys,
                                                  liver):
    from medmap.data.manifest import Manifest

    rc = main(["generate-report", str(pretrained), "--manifest", str(tiny_sim), "--out",
               str(tmp_path), "--cache-dir", vcache, "--split", "val", "--epochs", "1",
               "--per-case"])
    out = capsys.readouterr().out
    assert rc == 0 and "clinical accuracy=" in out and "ceiling on the true reports" in out
    res = json.loads((tmp_path / "report_gen.json").read_text())["clinical"]
    cases = [c for c in Manifest.load(tiny_sim) if c.organ == "liver" and c.split == "val"
             and c.reports and c.reports.get("global")]
    want = sum(liver(c.reports["global"]) == c.label for c in cases) / len(cases)
    assert res["n"] == len(cases) and res["ceiling"]["accuracy"] == pytest.approx(want)
    assert f"accuracy={res['ceiling']['accuracy']:.3f}" in out
