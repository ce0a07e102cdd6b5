"""Smoke tests of the benchmark scripts' ``--quick`` modes: each runs and prints a Markdown table
(and writes its ``--json``). No timing is asserted: the numbers are only printed."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCH / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(BENCH))


def _run(name: str, args: list[str], capsys, tmp_path) -> tuple[str, dict]:
    out_json = tmp_path / f"{name}.json"
    threads = torch.get_num_threads()
    try:
        _load(name).main([*args, "--json", str(out_json)])
    finally:
        torch.set_num_threads(threads)
    text = capsys.readouterr().out
    return text, json.loads(out_json.read_text())


def _assert_table(text: str, header_start: str) -> None:
    lines = text.splitlines()
    i = next((k for k, ln in enumerate(lines) if ln.startswith(header_start)), None)
    assert i is not None, f"no table starting {header_start!r} in:\n{text}"
    assert lines[i + 1].startswith("|---|")
    assert lines[i + 2].startswith("| ")


def test_train_step_quick(capsys, tmp_path):
    text, js = _run("train_step", ["--quick"], capsys, tmp_path)
    _assert_table(text, "| config | step | s/step | volumes/s | peak memory (MB)")
    _assert_table(text, "| config | overhead ratio |")
    steps = [r["step"] for r in js["raw"]]
    assert any(s.startswith("fine-tuning step") for s in steps)
    assert any(s.startswith("pre-training step") for s in steps)
    assert all(r["peak_mb"] > 0 for r in js["raw"])


def test_train_step_checkpointing_quick(capsys, tmp_path):
    text, js = _run("train_step", ["--quick", "--checkpoint", "--expert-checkpoint",
                                   "--only", "finetune"], capsys, tmp_path)
    assert js["settings"]["checkpoint"] and js["settings"]["expert_checkpoint"]
    assert "ckpt expert-ckpt" in js["raw"][0]["config"]
    assert js["settings"]["max_rss_sampled_gb"] > 0


def test_rss_guard_samples():
    C = _load("_common")
    with C.RSSGuard(None, interval_s=0.001) as g:
        bytearray(1 << 20)
    assert g.max_gb > 0


def test_data_pipeline_quick(capsys, tmp_path):
    text, js = _run("data_pipeline", ["--quick", "--persistent", "--workers-list", "0", "1"],
                    capsys, tmp_path)
    _assert_table(text, "| stage | s (epoch or call) | s/case | cases/s | volumes/s |")
    assert "cold: read + preprocess" in text and "cached epoch (VolumeCache hit)" in text
    assert "first epoch, DataLoader 1 workers" in text
    assert "PersistentDataset cached epoch" in text and js["persistentdataset_ratio"] > 0
    assert js["persistent_same_tensors"] is True
    assert "fine-tuning step" in text and js["data_fraction_of_step"] > 0


def test_text_cache_quick(capsys, tmp_path):
    text, js = _run("text_cache", ["--quick"], capsys, tmp_path)
    _assert_table(text, "| setting | s/epoch | s/step | pairs/s |")
    assert "speed-up per pre-training epoch" in text and js["speedup"] > 0


def test_inference_quick(capsys, tmp_path):
    text, js = _run("inference", ["--quick"], capsys, tmp_path)
    _assert_table(text, "| model | variant | cases/call | s/call | s/case | speed-up")
    variants = [r["variant"] for r in js["raw"]]
    assert variants[0] == "eager" and "fast" in variants and "fast+bf16" in variants
    for r in js["raw"]:
        assert r["mean"] > 0 and r["peak_mb"] > 0
        if "bf16" not in r["variant"]:
            assert r["max_abs_dprob"] <= 1e-3, r      # fp32 paths match eager
    assert js["raw"][0]["prob_spread"] > 0.01           # the probabilities are not flat


def test_gpu_cpu_flops_quick(capsys, tmp_path):
    text, js = _run("gpu", ["--quick", "--cpu-flops", "--device", "cpu"], capsys, tmp_path)
    _assert_table(text, "| stage | variant | s/step | volumes/s | TFLOP/step")
    flops = {r["stage"]: r["flops"] for r in js["raw"]}
    assert flops["pretrain"] > 0 and flops["finetune"] > flops["pretrain"] / 10
    assert "N/A" in text          # no peak for a CPU


def test_gpu_keeps_measuring_when_the_flop_count_fails_and_keeps_rows_when_stopped(
        capsys, tmp_path, monkeypatch):
    """On the lent H100 the FLOP-counting pass of the paper-size pre-training step ran out of
    memory and took the whole table with it, and a `timeout` lost every row: now a failed
    count leaves the timed rows (without TFLOP/s), and SIGTERM / Ctrl-C ends the run with the
    rows measured so far."""
    gpu = _load("gpu")

    def oom(step):
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(gpu, "count_flops", oom)
    out = tmp_path / "gpu.json"
    gpu.main(["--quick", "--cpu-flops", "--device", "cpu", "--json", str(out)])
    js = json.loads(out.read_text())
    errors = [r for r in js["raw"] if r.get("variant") == "flop count"]
    assert len(errors) == 2 and "out of memory" in errors[0]["error"]
    timed = [r for r in js["rows"] if r[2] is not None]
    assert len(timed) == 2 and all(r[4] is None and r[5] is None for r in timed)

    monkeypatch.undo()
    gpu = _load("gpu")
    calls = {"n": 0}
    real = gpu.C.measure

    def stop_second(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(gpu.C, "measure", stop_second)
    gpu.main(["--quick", "--cpu-flops", "--device", "cpu", "--json", str(out)])
    js = json.loads(out.read_text())
    assert "stopped early" in js["settings"]["stopped"] and len(js["rows"]) == 1
    capsys.readouterr()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="gpu.py's bf16/compile path needs CUDA")
def test_gpu_quick_cuda(capsys, tmp_path):
    text, _ = _run("gpu", ["--quick", "--variants", "eager", "--stages", "pretrain"],
                   capsys, tmp_path)
    _assert_table(text, "| stage | variant | s/step |")


def test_peak_table():
    gpu = _load("gpu")
    assert gpu.peak_bf16_tflops("NVIDIA H100 80GB HBM3") == 989
    assert gpu.peak_bf16_tflops("NVIDIA H200") == 989
    assert gpu.peak_bf16_tflops("NVIDIA A100-SXM4-80GB") == 312
    assert gpu.peak_bf16_tflops("NVIDIA L4") == 121
    assert gpu.peak_bf16_tflops("NVIDIA H100 PCIe") == 756
    assert gpu.peak_bf16_tflops("Some Future GPU") is None


def test_train_precision_quick(capsys, tmp_path):
    text, js = _run("train_precision", ["--quick"], capsys, tmp_path)
    _assert_table(text, "| step |")
    assert len(js["results"]) == 2 and all(r["speedup"] > 0 for r in js["results"])


def test_mg3d_epoch_quick(capsys, tmp_path):
    text, doc = _run("mg3d_epoch", ["--quick", "--out", str(tmp_path / "w")], capsys, tmp_path)
    _assert_table(text, "| step | seconds |")
    _assert_table(text, "| method | epoch s (last) |")
    costs = [r["what"] for r in doc["step"]["rows"]]
    assert sum("cost of" in c for c in costs) == 7                # one row per loss
    assert doc["step"]["step_ratio"] > 0 and doc["epochs"]["epoch_ratio"] > 0
    assert len(doc["epochs"]["rows"]) == 2 and all(r["epoch_s"] > 0 for r in doc["epochs"]["rows"])


def test_mg3d_downstream_merges_the_seeds_runs(tmp_path, capsys):
    """`mg3d_downstream.py --merge` reads each seed's OUT/compare/comparison.json."""
    from medmap.downstream.compare import summary_row

    outs = []
    for seed, auc in ((0, 0.9), (1, 0.7)):
        row = summary_row({})
        row["zeroshot_auc"] = auc
        doc = {"seed": seed, "split": "test", "summary": {"MedMAP": row}, "results": {}}
        out = tmp_path / f"s{seed}"
        (out / "compare").mkdir(parents=True)
        (out / "compare" / "comparison.json").write_text(json.dumps(doc))
        outs.append(str(out))
    assert _load("mg3d_downstream").main(["--merge", *outs, "--doc", str(tmp_path / "m")]) == 0
    merged = json.loads((tmp_path / "m.json").read_text())
    assert merged["seeds"] == [0, 1]
    assert merged["summary"]["MedMAP"]["zeroshot_auc"]["mean"] == pytest.approx(0.8)
    assert "| MedMAP | 0.800 (0.900 / 0.700) |" in (tmp_path / "m.md").read_text()


def test_mg3d_downstream_merge_of_an_unfinished_run_names_the_folder_and_the_fix(tmp_path,
                                                                               capsys):
    code = _load("mg3d_downstream").main(["--merge", str(tmp_path / "s0"),
                                          "--doc", str(tmp_path / "m")])
    err = capsys.readouterr().err
    assert code == 2 and str(tmp_path / "s0") in err and "--resume" in err
    assert not (tmp_path / "m.json").exists()


def test_sim_separability_scores_a_manifest_s_test_split(tiny_sim, capsys, tmp_path):
    """``--manifest``: lesion statistics read from a manifest's files, fitted on train + val and
    scored on its test split, per feature set; a case without a lesion mask, or whose mask file
    is missing, is named."""
    acc = _load("sim_separability").main(["--organ", "brain", "--manifest", str(tiny_sim)])
    assert set(acc) == {"absolute intensities", "tissue-referenced ratios", "both",
                        "T1C / T1WI lesion mean (log), alone"}      # the brain's contrast pair
    assert all(0.0 <= a <= 1.0 for a in acc.values())
    _assert_table(capsys.readouterr().out, "| features")
    rows = [json.loads(line) for line in tiny_sim.read_text().splitlines() if line.strip()]
    no_mask = tmp_path / "no_mask.jsonl"
    mods = [{k: str(tiny_sim.parent / v) for k, v in r["modalities"].items()} for r in rows]
    no_mask.write_text("\n".join(json.dumps({**r, "modalities": m, "masks": {}})
                                 for r, m in zip(rows, mods)) + "\n")
    with pytest.raises(SystemExit, match="has no masks.lesion"):
        _load("sim_separability").main(["--organ", "brain", "--manifest", str(no_mask)])
    first_brain = next(r for r in rows if r["organ"] == "brain")
    gone = tmp_path / "gone.jsonl"
    gone.write_text(json.dumps({**first_brain, "masks": {"lesion": str(tmp_path / "nope.nii.gz")}})
                    + "\n")
    with pytest.raises(SystemExit, match=f"case {first_brain['case_id']}: .*nope.nii.gz"):
        _load("sim_separability").main(["--organ", "brain", "--manifest", str(gone)])
