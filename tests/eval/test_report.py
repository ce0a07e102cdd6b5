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
    torch.manual_seed(0)
    cfg = MedMAPConfig.tiny(MODS, list(get_organ("liver").classes), organ="liver")
    model = MedMAPClassifier(cfg, torch.randn(len(MODS), cfg.text_dim))
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
