import copy
import json
from pathlib import Path

import torch

from medmap.ablation import run_ablation, summarise, to_markdown
from medmap.cli import main
from medmap.demo import DemoSettings, demo_config


def test_demo_quick_runs_end_to_end_on_both_organs(tmp_path, tiny_bert, monkeypatch, capsys):
    """`medmap demo --quick` (the README's first command): the whole pipeline, the full
    layout (data, runs, reports, summary.json)."""
    import medmap.demo as demo

    real = demo.demo_config

    def tiny_text(*a, **kw):  # the bundled MiniLM works too, the tiny BERT is faster
        cfg = real(*a, **kw)
        cfg.text.model = str(tiny_bert)
        cfg.pretrain.progress = cfg.finetune.progress = False
        # the demo's model at a quarter of its widths: the pipeline, not the model, is tested
        cfg.model.encoder.channels = (4, 8, 16)
        cfg.model.conv_stream.channels = (4, 4, 8, 16)
        cfg.model.embed_dim = 16
        return cfg

    monkeypatch.setattr(demo, "demo_config", tiny_text)
    # the real --quick runs the brain alone (80 cases, 12 epochs: the size at which it learns);
    # this test runs the pipeline of both organs at the smallest size that still exercises it
    real_quick = DemoSettings.quick()
    assert real_quick.organs == ("brain",) and real_quick.finetune_epochs["brain"] >= 10
    tiny = DemoSettings(cases={"liver": 28, "brain": 20}, sim_size={"liver": 32, "brain": 32},
                        split_fractions=(0.5, 0.15, 0.35), size=16, pretrain_epochs=1,
                        pretrain_patience=0, finetune_epochs={"liver": 1, "brain": 1}, n_boot=50,
                        organs=("brain",))
    monkeypatch.setattr(DemoSettings, "quick", classmethod(lambda cls: copy.deepcopy(tiny)))
    assert main(["demo", "--quick", "--organs", "liver", "brain",
                 "--out", str(tmp_path / "medmap-demo")]) == 0
    assert "zero-shot AUC" in capsys.readouterr().out
    summary = json.loads((tmp_path / "medmap-demo" / "summary.json").read_text())
    assert summary["settings"]["cases"] == tiny.cases
    assert summary["organs"] == ["liver", "brain"]
    for organ in ("liver", "brain"):
        r = summary[organ]
        assert 0.0 <= r["accuracy"] <= 1.0 and r["n_test"] > 0
        report = tmp_path / "medmap-demo" / "runs" / organ / "finetune" / "eval-test" / "report.html"
        assert report.exists() and r["report"] == str(report)
        assert (tmp_path / "medmap-demo" / "runs" / organ / "pretrain" / "model" / "model.safetensors").exists()
    saved = summary
    assert saved["liver"]["chance"] == 1 / 7 and saved["brain"]["chance"] == 0.5
    for organ in ("liver", "brain"):     # the quick demo says when it is only a smoke test
        lo = saved[organ]["ci"]["accuracy"][0]
        assert saved[organ]["above_chance"] == (lo > saved[organ]["chance"])
    assert (tmp_path / "medmap-demo" / "data" / "DATASHEET.md").exists()
    # the language at work: report-free zero-shot and per-sequence retrieval, exact keys
    for organ in ("liver", "brain"):
        zs, rt = saved[organ]["zeroshot"], saved[organ]["retrieval"]
        assert set(zs) == {"auc", "ci", "accuracy"} and len(zs["ci"]) == 2
        assert isinstance(zs["auc"], float) and 0.0 <= zs["accuracy"] <= 1.0
        assert set(rt) == {"R@1", "R@5", "R@10", "chance@1", "chance@5", "chance@10", "gallery"}
        assert isinstance(rt["gallery"], int) and rt["gallery"] > 0
        assert 0 < rt["chance@1"] <= rt["chance@5"] <= rt["chance@10"] <= 1
        html = (tmp_path / "medmap-demo" / "runs" / organ / "finetune" / "eval-test" /
                "report.html").read_text()
        assert "Language (pre-trained model)" in html and "Zero-shot classification" in html
    assert set(saved["stages"]) >= {"simulation", "liver: fine-tuning", "brain: pre-training"}
    # benchmarks/profile_demo.py on this run: the stage table, then one fine-tuning epoch by
    # operator (the tiny text model is in the run's own config.yaml)
    from test_benchmarks import _load

    capsys.readouterr()
    _load("profile_demo").main(["--out", str(tmp_path / "medmap-demo"), "--reuse",
                                "--operators", "5", "--organ", "brain"])   # the smaller epoch
    text = capsys.readouterr().out
    assert "| liver: fine-tuning |" in text and "| total (inside the run) |" in text
    assert "Self CPU" in text and "Lightning ranges" in text
    # the README's "Python" section runs as written, on this demo's folders
    import re

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    block = re.search(r"## Python\n.*?```python\n(.*?)```", readme, re.S)
    assert block, "README.md has no Python section"
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(block.group(1), "README.md#python", "exec"), scope)
    assert scope["result"].predicted in scope["model"].classes
    assert (tmp_path / "t2wi_cam.nii.gz").exists()
    assert len(scope["preds"]) > 0 and "auc" in scope["zs"]


def test_ablation_rows_and_table(tiny_experiment, tmp_path):
    cfg = tiny_experiment
    cfg.finetune.epochs = 1
    cfg.pretrain.epochs = 1
    rows = ("baseline", "+CCT", "+CSA", "language-removed", "report-assisted", "radiomics")
    doc = run_ablation(cfg, tmp_path / "abl", seeds=(0, 1), rows=rows, split="val", n_boot=50)
    assert set(doc["rows"]) == set(rows)
    md = (tmp_path / "abl" / "ablation.md").read_text()
    assert "| +CSA |" in md and "±" in md and "Paired difference" in md
    # the paper's protocol is labelled as what it is, the radiomics baseline sits beside
    assert "| report-assisted (†) |" in md and "label leakage" in md and "| radiomics |" in md
    assert doc["caveats"]["report-assisted"].startswith("reads each test case's own reports")
    assert doc["rows"]["radiomics"]["accuracy_mean"] is not None
    assert (tmp_path / "abl" / "seed1" / "radiomics" / "radiomics.json").exists()
    rep = json.loads((tmp_path / "abl" / "seed0" / "report-assisted" / "model" /
                      "config.json").read_text())["config"]
    assert rep["csa_text"] == "report"
    # +CSA used the pre-trained experts; baseline did not
    assert (tmp_path / "abl" / "seed0" / "pretrain-experts" / "model").exists()
    run = tmp_path / "abl" / "seed0"
    cfg_doc = json.loads((run / "plus-CSA" / "model" / "config.json").read_text())
    assert cfg_doc["init"].endswith("pretrain-experts/model")
    assert cfg_doc["config"]["csa_text"] == "knowledge" and cfg_doc["config"]["use_conv"]
    cct = json.loads((run / "plus-CCT" / "model" / "config.json").read_text())["config"]
    assert cct["use_cct"] and not cct["use_conv"] and cct["csa_text"] == "none"
    # language removed: the class prompts are random vectors with the real ones' norms
    from safetensors.torch import load_file

    real = load_file(str(run / "plus-CSA" / "model" / "model.safetensors"))["class_prompts"]
    rand = load_file(str(run / "language-removed" / "model" / "model.safetensors"))["class_prompts"]
    assert not torch.allclose(real, rand)
    assert torch.allclose(real.norm(dim=-1), rand.norm(dim=-1), rtol=1e-5)
    eff = doc["language_effect"]
    assert eff["seeds"] == [0, 1] and len(eff["accuracy_diff_per_seed"]) == 2
    assert len(eff["accuracy_diff_t95"]) == 2 and len(eff["accuracy_diff_bootstrap95"]) == 2
    raw = (tmp_path / "abl" / "ablation.json").read_text()
    assert "NaN" not in raw and json.loads(raw)["rows"]["+CSA"]["accuracy_mean"] is not None
    # an interrupted ablation resumes: the same command skips every finished row, so nothing
    # is retrained and the table is the same; other settings do not reuse them
    weights = run / "plus-CSA" / "model" / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    again = run_ablation(cfg, tmp_path / "abl", seeds=(0, 1), rows=rows, split="val", n_boot=50)
    assert weights.stat().st_mtime_ns == stamp
    assert again["rows"] == doc["rows"]
    from medmap.ablation import _finished_row, _fingerprint

    other = copy.deepcopy(cfg)
    other.finetune.epochs = 2
    assert _finished_row(tmp_path / "abl", 0, "+CSA", _fingerprint(cfg, "val")) is not None
    assert _finished_row(tmp_path / "abl", 0, "+CSA", _fingerprint(other, "val")) is None


def test_summarise_and_markdown():
    s = summarise([{"accuracy": 0.5, "auc": 0.6, "balanced_accuracy": 0.5},
                   {"accuracy": 0.7, "auc": 0.8, "balanced_accuracy": 0.6}])
    assert abs(s["accuracy_mean"] - 0.6) < 1e-9 and abs(s["accuracy_std"] - 0.1414) < 1e-3
    md = to_markdown({"organ": "liver", "split": "test", "seeds": [0, 1], "rows": {"x": s}})
    assert "| x | 0.600 ± 0.141 |" in md
    one = to_markdown({"organ": "liver", "split": "test", "seeds": [0],
                       "rows": {"x": summarise([{"accuracy": 0.5, "auc": 0.6,
                                                 "balanced_accuracy": 0.5}])}})
    assert "| x | 0.500 | 0.600 | 0.500 |" in one          # one seed: no made-up spread


def test_cli_reports_bad_config_without_traceback(tmp_path, capsys):
    bad = tmp_path / "c.yaml"
    bad.write_text("finetune: {epochs: many}\n")
    assert main(["finetune", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "finetune.epochs" in err and "expected int" in err
    assert main(["finetune", "--config", str(tmp_path / "none.yaml")]) == 2
    capsys.readouterr()
    assert main(["finetune", "data.manifest="]) == 2
    assert "data.manifest: expected text, got None" in capsys.readouterr().err
    assert main(["finetune", "data.manifest=''"]) == 2
    assert "data.manifest is empty" in capsys.readouterr().err


def test_demo_config_fits_the_encoder():
    from pathlib import Path

    import pytest

    from medmap.models.encoders import build_encoder

    for settings, name in ((DemoSettings(), "cnn"), (DemoSettings.full(), "swin")):
        cfg = demo_config("liver", "m.jsonl", Path("c"), settings)
        side = cfg.data.preprocess.size[0]
        assert cfg.model.encoder.name == name
        assert side % build_encoder(cfg.model.encoder).min_multiple == 0
        assert cfg.data.preprocess.roi_mask == "lesion"          # the LLD-MMRI lesion region
    assert demo_config("brain", "m.jsonl", Path("c"), DemoSettings()).data.augment.enabled
    with pytest.raises(ValueError, match="'cnn' or 'swin'"):
        demo_config("liver", "m.jsonl", Path("c"), DemoSettings(expert="vit"))


def test_demo_keeps_the_liver_phases_apart_and_pools_the_brain_sequences():
    """The liver's phases keep fixed slots and bring their own region statistics, which a linear
    head also reads (its classes differ in how a lesion changes from phase to phase); the
    brain's sequences are averaged; without a lesion mask there are no statistics to read."""
    from pathlib import Path

    liver = demo_config("liver", "m.jsonl", Path("c"), DemoSettings()).model
    brain = demo_config("brain", "m.jsonl", Path("c"), DemoSettings()).model
    assert (liver.modality_pool, liver.region_intensity, liver.stats_head) == ("concat", True,
                                                                                True)
    assert (brain.modality_pool, brain.region_intensity, brain.stats_head) == ("mean", False,
                                                                                False)
    whole = DemoSettings(roi_mask={"liver": None, "brain": None},
                         intensity={"liver": "mri", "brain": "mri"})
    assert not demo_config("liver", "m.jsonl", Path("c"), whole).model.region_intensity
    assert not demo_config("liver", "m.jsonl", Path("c"), whole).model.stats_head


def test_shipped_demo_config_is_the_demo_for_both_organs():
    """configs/demo.yaml (for `medmap ablation --config`) is the demo's setting; the organ comes
    from data.organ=."""
    from pathlib import Path

    from medmap.config import load_config
    from medmap.train.config import ExperimentConfig

    root = Path(__file__).resolve().parents[1]
    for organ in ("liver", "brain"):
        cfg = demo_config(organ, Path("medmap-demo/data/manifest.jsonl"), Path("medmap-demo/cache"),
                          DemoSettings())
        extra = (["data.preprocess.intensity=mri", "model.modality_pool=mean",   # the header's
                  "model.region_intensity=false", "model.stats_head=false", "finetune.epochs=20"]
                 if organ == "brain" else [])
        shipped = load_config(ExperimentConfig, root / "configs" / "demo.yaml",
                              [f"data.organ={organ}", *extra])
        assert shipped == cfg, "configs/demo.yaml is out of date"


def test_shipped_demo_swin_config_differs_from_the_demo_only_in_its_experts():
    """configs/demo-swin.yaml (the ablation's Swin rows) is configs/demo.yaml with 3D Swin
    experts: every other setting is the demo's, so the rows compare architectures only."""
    import dataclasses
    from pathlib import Path

    from medmap.config import load_config
    from medmap.models.encoders import SwinConfig
    from medmap.train.config import ExperimentConfig

    root = Path(__file__).resolve().parents[1] / "configs"
    cnn = load_config(ExperimentConfig, root / "demo.yaml")
    swin = load_config(ExperimentConfig, root / "demo-swin.yaml")
    assert swin.model.encoder == SwinConfig(feature_size=12, window_size=4, out_stage=3)
    assert dataclasses.replace(swin, model=dataclasses.replace(
        swin.model, encoder=cnn.model.encoder)) == cnn


def test_shipped_configs_hold_only_what_differs_from_the_defaults():
    from pathlib import Path

    import yaml

    from medmap.config import diff_dict, load_config
    from medmap.train.config import ExperimentConfig

    root = Path(__file__).resolve().parents[1] / "configs"
    for name in ("demo.yaml", "demo-swin.yaml", "liver.yaml", "brain.yaml"):
        written = yaml.safe_load((root / name).read_text())
        assert written == diff_dict(load_config(ExperimentConfig, root / name)), name


def test_demo_refuses_an_unknown_organ_before_any_work(tmp_path):
    import pytest

    from medmap.config import UserError
    from medmap.demo import run_demo

    with pytest.raises(UserError, match=r"demo organs \['kidney'\]: choose from \['liver', 'brain'\]"):
        run_demo(tmp_path / "d", organs=("kidney",))
    assert not (tmp_path / "d").exists()


def test_stage_clock_counts_running_worker_processes():
    """The demo keeps one worker pool across stages; its workers' CPU counts in the stage that
    used them, not only once they exit."""
    import multiprocessing as mp
    import time

    from medmap.demo_workers import StageClock

    clock = StageClock()
    ctx = mp.get_context("fork")
    stop = ctx.Event()
    with clock("busy child"):
        child = ctx.Process(target=_spin, args=(stop,))
        child.start()
        time.sleep(1.0)
        assert child.is_alive()
    stop.set()
    child.join()
    assert clock.table["busy child"]["cpu_s"] >= 0.5              # the live child's seconds


def _spin(stop):
    while not stop.is_set():
        pass


def test_the_demos_workers_are_forked_with_one_torch_thread_each():
    """The demo's shared pool: on Linux its workers are forked (they inherit the imports
    instead of importing torch and MONAI again), each with one torch thread."""
    import sys

    import torch

    from medmap.demo_workers import shared_workers
    from medmap.train.engine import available_cpus

    with shared_workers() as pool:
        if pool is None:                      # one core: no pool at all, by design
            assert available_cpus() < 2
            return
        assert {pool.submit(torch.get_num_threads).result() for _ in range(4)} == {1}
        method = pool._mp_context.get_start_method()
        assert method == ("fork" if sys.platform.startswith("linux") else "spawn")
    # what this process imported before forking them, its workers have without importing it
    marker = "wave"                          # a standard-library module nothing here imports
    if marker not in sys.modules:
        with shared_workers(preload=(marker,)) as pool:
            if pool._mp_context.get_start_method() == "fork":
                assert pool.submit(_imported, marker).result()


def _imported(name: str) -> bool:
    import sys

    return name in sys.modules


def test_the_organs_side_by_side_each_get_their_own_share_of_the_cores():
    """Two organs side by side: two workers, each pinned to its own half of the cores with as
    many torch threads, so what it runs (cache workers, radiomics, DataLoader workers) sizes
    itself by that half; a worker that fails stops the others."""
    import os
    import time

    import pytest

    from medmap.demo_workers import _cores, shared_workers
    from medmap.train.engine import available_cpus

    cores = _cores()
    if len(cores) < 2 or not hasattr(os, "sched_getaffinity"):
        pytest.skip("needs two cores and CPU affinity")
    with shared_workers(2) as pool:
        seen = {f.result() for f in [pool.submit(_share, 0.5) for _ in range(2)]}
    assert sorted(sorted(s) for s, _, _ in seen) == [cores[0::2], cores[1::2]]  # disjoint halves
    for share, threads, cpus in seen:
        assert threads == cpus == len(share)
    t = time.perf_counter()
    with pytest.raises(RuntimeError, match="organ failed"):
        with shared_workers(2) as pool:
            pool.submit(time.sleep, 60)
            pool.submit(_fail).result()
    assert time.perf_counter() - t < 30          # the sleeping worker was stopped, not awaited
    assert available_cpus() == len(cores)        # this process keeps every core


def _share(pause: float):
    import os
    import time

    import torch

    from medmap.train.engine import available_cpus

    time.sleep(pause)                  # both workers take one task each
    return frozenset(os.sched_getaffinity(0)), torch.get_num_threads(), available_cpus()


def _fail():
    raise RuntimeError("organ failed")


def test_a_worker_that_dies_while_the_organs_train_side_by_side_is_a_clear_error(
        tmp_path, monkeypatch):
    """A worker killed under the demo (the kernel's OOM killer, say) ends the demo with an
    error that names the fix (--in-turn), not a BrokenProcessPool traceback."""
    import pytest

    import medmap.demo as demo
    from medmap.config import UserError
    from medmap.train.engine import available_cpus

    if available_cpus() < 2:
        pytest.skip("side by side needs two cores")
    monkeypatch.setattr(demo, "_organ_training", _killed)     # the forked workers see it
    tiny = DemoSettings(cases={"liver": 8, "brain": 8}, sim_size={"liver": 32, "brain": 32},
                        size=16, pretrain_epochs=1, finetune_epochs={"liver": 1, "brain": 1})
    with pytest.raises(UserError, match="died while the organs trained side by side.*--in-turn"):
        demo.run_demo(tmp_path / "d", settings=tiny)


def _killed(*args, **kwargs):
    import os

    os._exit(9)


def test_demo_in_turn_flag_reaches_run_demo(monkeypatch):
    import medmap.demo as demo

    seen = {}
    monkeypatch.setattr(demo, "run_demo", lambda *a, **k: seen.update(k))
    assert main(["demo", "--in-turn", "--out", "x"]) == 0 and seen["side_by_side"] is False
    assert main(["demo", "--out", "x"]) == 0 and seen["side_by_side"] is None
