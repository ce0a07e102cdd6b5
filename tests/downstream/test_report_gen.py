"""Report generation: the decoder overfits two reports; the task runs end to end."""

import json

import torch


def test_generator_overfits_two_reports(vlm, tiny_sim, vcache):
    from medmap.downstream.report_gen import (
        ReportGenConfig,
        bleu_scores,
        bleu_tokens,
        generate_reports,
        train_report_generator,
    )
    from medmap.train.engine import OptimConfig

    items = vlm.volume_items(tiny_sim, "train", require_report=True)[:2]
    assert len(items) == 2 and items[0].report != items[1].report
    loader = vlm.loader(vcache)
    torch.manual_seed(0)
    gen, vocab, losses = train_report_generator(
        vlm, items, loader, ReportGenConfig(dropout=0.0, max_len=64),
        OptimConfig(epochs=150, batch_size=2, lr=3e-3, warmup_epochs=1.0, weight_decay=0.0))
    assert losses[-1] < 0.2 < losses[0]
    out = generate_reports(gen, vocab, vlm, items, loader)
    assert [bleu_tokens(o) for o in out] == [bleu_tokens(it.report) for it in items]
    assert bleu_scores([it.report for it in items], out)["BLEU-4"] == 1.0


def test_report_generation_end_to_end(vlm, tiny_sim, vcache, tmp_path):
    from medmap.downstream.report_gen import report_generation

    res = report_generation(vlm, tiny_sim, tmp_path, epochs=1, cache_dir=vcache)
    assert res["n_train"] > 0 and res["n_eval"] > 0
    assert set(res["bleu"]) == {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4"}
    assert all(0.0 <= v <= 1.0 for v in res["bleu"].values())
    lines = (tmp_path / "generated.jsonl").read_text().splitlines()
    assert len(lines) == res["n_eval"]
    assert {"case_id", "modality", "reference", "generated"} <= set(json.loads(lines[0]))
    assert (tmp_path / "generator" / "model.safetensors").exists()
    assert json.loads((tmp_path / "report_gen.json").read_text())["vocab_size"] == res["vocab_size"]


def test_per_case_generation_of_the_global_impression(vlm, tiny_sim, vcache, tmp_path):
    from medmap.data.manifest import Manifest
    from medmap.downstream.report_gen import report_generation

    res = report_generation(vlm, tiny_sim, tmp_path, epochs=1, cache_dir=vcache, per_case=True)
    cases = [c for c in Manifest.load(tiny_sim) if c.organ == "liver" and c.split == "test"]
    assert res["per_case"] and res["n_eval"] == len(cases)
    rows = [json.loads(x) for x in (tmp_path / "generated.jsonl").read_text().splitlines()]
    assert {r["modality"] for r in rows} == {"case"}
    assert {r["reference"] for r in rows} == {c.reports["global"] for c in cases}
