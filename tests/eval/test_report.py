"""evaluate() end to end on a tiny simulated split, and the HTML report rendered in headless
Chromium (screenshot not blank, every embedded image decoded)."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from medmap.data.manifest import Manifest, ManifestError
from medmap.data.preprocess import PreprocessConfig
from medmap.data.vocab import get_organ
from medmap.eval.evaluate import evaluate
from medmap.eval.report import render_report
from medmap.models.hub import save_pretrained
from medmap.models.medmap import MedMAPClassifier, MedMAPConfig


def tiny_classifier(mods, classes, organ="liver"):
    """A tiny untrained MedMAP classifier with random prompt buffers (seeded)."""
    torch.manual_seed(0)
    model = MedMAPClassifier(MedMAPConfig.tiny(list(mods), list(classes), organ=organ))
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if "prompt" in name:
                buf.normal_()
    return model


MODS = ["T2WI", "C+A"]
CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--disable-dev-shm-usage"]


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    from medmap.data.sim import simulate

    root = tmp_path_factory.mktemp("eval_sim")
    simulate(root, cases=14, size=32, seed=0, organs=("liver",), workers=1)
    return root


@pytest.fixture(scope="module")
def run_dir(sim, tmp_path_factory):
    model = tiny_classifier(MODS, list(get_organ("liver").classes))
    run = tmp_path_factory.mktemp("run")
    save_pretrained(model, run / "model", organ="liver",
                    preprocess=PreprocessConfig(spacing=None, size=(32, 32, 32)).to_dict())
    return run


@pytest.fixture(scope="module")
def result(run_dir, sim):
    return evaluate(run_dir, sim / "manifest.jsonl", split="train", n_boot=100, n_cam_cases=1,
                    batch_size=4)


def test_outputs_and_metrics(result, run_dir, sim):
    n = len(Manifest.load(sim / "manifest.jsonl").select(split="train").cases)
    assert n >= 5
    out = run_dir / "eval-train"                       # default: <model>/../eval-<split>
    for name in ("metrics.json", "predictions.csv", "report.html"):
        assert (out / name).is_file(), name
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["info"]["split"] == "train" and doc["info"]["cases"] == n
    m = doc["metrics"]
    assert m["n"] == n and len(m["confusion_matrix"]) == 7
    assert sum(map(sum, m["confusion_matrix"])) == n
    assert 0.0 <= m["accuracy"] <= 1.0 and m["ci"]["accuracy"][0] <= m["accuracy"]
    loc = doc["localisation"]
    assert set(loc["per_modality"]) <= set(MODS) and loc["overall"]["n"] > 0
    assert 0.0 < loc["overall"]["pointing_chance"] < 1.0     # the lesion's share of the volume
    assert {r["case_id"] for r in doc["localisation_cases"]} <= {c["case_id"] for c in doc["cases"]}
    with open(out / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == n and rows[0]["label"]
    probs = np.array([[float(r[f"prob_{c}"]) for c in doc["classes"]] for r in rows])
    assert np.allclose(probs.sum(1), 1.0, atol=1e-5)


def test_batch_size_changes_no_result(result, run_dir, sim, tmp_path):
    """The demo evaluates 16 cases per pass instead of 4: predictions, metrics, localisation
    and the cases picked for CAM overlays must not depend on how the cases are batched."""
    other = evaluate(run_dir, sim / "manifest.jsonl", split="train", n_boot=100, n_cam_cases=1,
                     batch_size=3, out_dir=tmp_path / "bs3")
    a, b = result["metrics"], other["metrics"]
    for k in ("accuracy", "auc", "balanced_accuracy", "confusion_matrix"):
        assert np.allclose(np.asarray(a[k], float), np.asarray(b[k], float), atol=1e-6), k
    assert a["ci"].keys() == b["ci"].keys()
    assert all(np.allclose(a["ci"][k], b["ci"][k], atol=1e-6) for k in a["ci"])
    assert [c["case_id"] for c in result["cases"]] == [c["case_id"] for c in other["cases"]]
    for x, y in zip(result["cases"], other["cases"]):
        px = [v for k, v in x.items() if k.startswith("prob_")]
        py = [v for k, v in y.items() if k.startswith("prob_")]
        assert x["predicted"] == y["predicted"] and np.allclose(px, py, atol=1e-5)
    la, lb = result["localisation"]["overall"], other["localisation"]["overall"]
    assert la["n"] == lb["n"] and abs(la["pointing_game"] - lb["pointing_game"]) < 1e-6
    shown = [re.findall(r"Grad-CAM of case ([^\"]+)\"", Path(r["files"]["report"]).read_text(
        encoding="utf-8")) for r in (result, other)]
    assert shown[0] and shown[0] == shown[1]


def test_report_is_self_contained(result):
    page = Path(result["files"]["report"]).read_text(encoding="utf-8")
    imgs = re.findall(r"<img [^>]*src=\"([^\"]+)\"", page)
    assert len(imgs) >= 4                                  # ROC, confusion, t-SNE, CAM overlays
    assert all(s.startswith("data:image/png;base64,") for s in imgs)
    assert not re.search(r"(src|href)=\"(https?:)?//", page) and "<link" not in page
    for text in ("Accuracy", "Per class", "confusion matrix", "t-SNE", "pointing game",
                 "random point", "CAM overlays"):
        assert text in page, text


def test_refuses_invalid_manifest(run_dir, sim, tmp_path):
    cases = Manifest.load(sim / "manifest.jsonl").resolved()
    cases[0].modalities["T2WI"] = str(tmp_path / "gone.nii.gz")
    bad = Manifest(cases, tmp_path).save(tmp_path / "bad.jsonl")
    with pytest.raises(ManifestError, match=r"liver_0000.*gone\.nii\.gz\): file not found"):
        evaluate(run_dir, bad, split="train", out_dir=tmp_path / "out")
    train_only = Manifest([c for c in Manifest.load(sim / "manifest.jsonl").resolved()
                           if c.split == "train"], tmp_path).save(tmp_path / "train.jsonl")
    with pytest.raises(ManifestError, match=r"no liver cases in split 'test'.*\['train'\]"):
        evaluate(run_dir, train_only, split="test", out_dir=tmp_path / "out")


def test_render_without_labels():
    res = {"classes": ["a", "b"], "info": {"split": "test"}, "metrics": None, "localisation": None}
    page = render_report(res, labels=np.array([-1, -1, -1]), probs=np.full((3, 2), 0.5),
                         fusion=np.random.default_rng(0).normal(size=(3, 4)))
    assert "classification metrics need labels" in page and "data-images" in page


def test_report_renders_in_chromium(result, tmp_path):
    exe = chromium()
    if exe is None:
        pytest.skip("chromium is not installed (run .ci/install-browser)")
    report = Path(result["files"]["report"]).resolve()
    shot = tmp_path / "report.png"
    base = [exe, *CHROME_FLAGS]

    def run(args: list[str], profile: str) -> str:
        try:
            return subprocess.run(base + [f"--user-data-dir={tmp_path / profile}", *args],
                                  capture_output=True, timeout=120, check=False, text=True).stdout
        except subprocess.TimeoutExpired:
            pytest.fail(f"headless chromium did not finish within 120 s: {args}")

    run([f"--screenshot={shot}", "--window-size=1200,2000", report.as_uri()], "p1")
    dom = run(["--virtual-time-budget=5000", "--dump-dom", report.as_uri()], "p2")
    assert shot.is_file() and shot.stat().st_size > 0, "chromium wrote no screenshot"
    from matplotlib.image import imread

    px = imread(str(shot))[..., :3]
    assert px.shape[0] >= 1000 and px.shape[1] >= 1000
    assert float(px.var()) > 1e-3, "blank screenshot"
    assert float((px.mean(-1) < 0.9).mean()) > 0.02, "screenshot is (almost) all white"
    n_img = Path(report).read_text(encoding="utf-8").count("<img ")
    body = re.search(r"<body[^>]*>", dom)
    assert body, f"no <body> in the dumped DOM: {dom[:300]!r}"
    total = re.search(r'data-images-total="(\d+)"', body.group(0))
    loaded = re.search(r'data-images-loaded="(\d+)"', body.group(0))
    assert total and loaded, f"the report's load script did not run: {body.group(0)}"
    assert int(total.group(1)) == n_img > 0
    assert int(loaded.group(1)) == n_img, f"{loaded.group(1)} of {n_img} images decoded"

    # negative control: a corrupt image is counted as not loaded
    broken = tmp_path / "broken.html"
    page = report.read_text(encoding="utf-8")
    broken.write_text(re.sub(r'src="data:image/png;base64,[^"]+"',
                             'src="data:image/png;base64,AAAA"', page, count=1), encoding="utf-8")
    dom = run(["--virtual-time-budget=5000", "--dump-dom", broken.as_uri()], "p3")
    assert f'data-images-loaded="{n_img - 1}"' in dom


def test_tsne_small_n():
    from medmap.eval.tsne import tsne_embedding, tsne_perplexity

    rng = np.random.default_rng(0)
    assert tsne_embedding(rng.normal(size=(1, 4))).shape == (1, 2)
    assert tsne_embedding(rng.normal(size=(3, 4))).shape == (3, 2)        # PCA fallback
    xy = tsne_embedding(rng.normal(size=(9, 4)))
    assert xy.shape == (9, 2) and np.isfinite(xy).all()
    assert tsne_perplexity(9) < 9 and tsne_perplexity(1000) == 30.0


def test_run_manifest(run_dir, tmp_path):
    from medmap.inference import resolve_model_dir, run_manifest

    assert resolve_model_dir(run_dir) == run_dir / "model"
    assert resolve_model_dir(run_dir / "model") == run_dir / "model"
    with pytest.raises(FileNotFoundError, match="pass the manifest explicitly"):
        run_manifest(run_dir)
    run = tmp_path / "run"
    shutil.copytree(run_dir / "model", run / "model")
    (run / "config.yaml").write_text("data:\n  manifest: some/cases.jsonl\n  organ: liver\n")
    assert run_manifest(run) == run_manifest(run / "model") == Path("some/cases.jsonl")


def test_evaluate_adds_its_metrics_to_the_model_card(result, run_dir):
    from medmap.eval.evaluate import _update_card

    card = (run_dir / "model" / "README.md").read_text(encoding="utf-8")
    m = result["metrics"]
    assert "## Evaluation" in card and "Not evaluated yet" not in card
    assert f"### train split of `{Path(result['info']['manifest']).resolve()}`" in card
    assert f"| accuracy | {m['accuracy']:.3f} | {m['ci']['accuracy'][0]:.3f}-" in card
    assert f"{result['info']['labelled cases']} labelled" in card and "pointing game" in card
    _update_card(run_dir / "model", result)                 # the same evaluation again
    again = (run_dir / "model" / "README.md").read_text(encoding="utf-8")
    assert again.count("### train split of") == 1


def _eight_phase_page(tmp_path) -> tuple[Path, int]:
    """A report whose CAM overlay has the 8 liver phases, plus a script recording layout."""
    rng = np.random.default_rng(0)
    phases = list(get_organ("liver").modalities)
    assert len(phases) == 8
    panels = [{"modality": m, "image": rng.random((32, 32)), "cam": rng.random((32, 32)),
               "mask": None} for m in phases]
    ov = [{"case_id": "c1", "true_index": 0, "true": "a", "pred": "a", "prob": 0.9,
           "correct": True, "slice_index": 16, "slice_source": "CAM maximum", "panels": panels}]
    res = {"classes": ["a", "b"], "info": {"split": "test"}, "metrics": None,
           "localisation": None}
    page = render_report(res, labels=np.array([0, 1]), probs=np.full((2, 2), 0.5),
                         fusion=rng.normal(size=(2, 4)), overlays=ov)
    probe = ("<script>window.addEventListener('load',function(){var r=0;"
             "var im=document.querySelectorAll('.case img');for(var i=0;i<im.length;i++){"
             "r=Math.max(r,im[i].getBoundingClientRect().right);}"
             "document.body.setAttribute('data-cam-right',String(Math.ceil(r)));"
             "document.body.setAttribute('data-scroll-width',"
             "String(document.documentElement.scrollWidth));});</script></body>")
    f = tmp_path / "eight.html"
    f.write_text(page.replace("</body>", probe), encoding="utf-8")
    return f, len(phases)


def test_cam_rows_of_eight_phases_fit_the_page(tmp_path):
    """The 8-phase CAM overlay is drawn in rows of 4 panels: its image is no wider than the
    page's 1100 px column (it was 8 panels side by side, about 1600 px)."""
    import base64

    from matplotlib.image import imread

    page, _ = _eight_phase_page(tmp_path)
    src = re.findall(r"<div class='case'>.*?<img src=\"data:image/png;base64,([^\"]+)\"",
                     page.read_text(encoding="utf-8"), flags=re.S)
    assert len(src) == 1
    png = tmp_path / "cam.png"
    png.write_bytes(base64.b64decode(src[0]))
    h, w = imread(str(png)).shape[:2]
    assert w <= 1100 and h > w / 3, (w, h)                   # two rows of four


def test_cam_rows_fit_a_1400px_browser(tmp_path):
    exe = chromium()
    if exe is None:
        pytest.skip("chromium is not installed (run .ci/install-browser)")
    page, _ = _eight_phase_page(tmp_path)
    try:
        dom = subprocess.run([exe, *CHROME_FLAGS, f"--user-data-dir={tmp_path / 'p'}",
                              "--window-size=1400,1000", "--virtual-time-budget=5000",
                              "--dump-dom", page.resolve().as_uri()],
                             capture_output=True, timeout=120, check=False, text=True).stdout
    except subprocess.TimeoutExpired:
        pytest.fail("headless chromium did not finish within 120 s")
    body = re.search(r"<body[^>]*>", dom)
    assert body, dom[:300]
    right = re.search(r'data-cam-right="(\d+)"', body.group(0))
    width = re.search(r'data-scroll-width="(\d+)"', body.group(0))
    assert right and width, body.group(0)
    assert int(right.group(1)) <= 1400 and int(width.group(1)) <= 1400, body.group(0)
