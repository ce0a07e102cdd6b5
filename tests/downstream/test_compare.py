"""compare_pretraining: every task for a pre-trained model and for no pre-training."""

import json


def test_compare_pretraining_writes_json_and_markdown(pretrained, tiny_sim, vcache, tmp_path):
    from medmap.downstream.compare import compare_pretraining

    doc = compare_pretraining({"no pre-training": None, "MedMAP": pretrained}, tiny_sim,
                              tmp_path, split="val", seg_epochs=1, gen_epochs=1,
                              cache_dir=vcache)
    assert list(doc["summary"]) == ["no pre-training", "MedMAP"]
    for name, row in doc["summary"].items():
        must = ("zeroshot_accuracy", "zeroshot_accuracy_ci", "R@5", "case_R@5",
                "probe_accuracy", "dice", "dice_ci", "BLEU-4", "rouge_l", "rouge_l_ci",
                "clinical_accuracy", "clinical_ci", "clinical_ceiling")
        empty = [k for k in must if row[k] is None]    # (AUCs need both classes in the split)
        assert not empty, f"{name}: no value in {empty}"
        # report generation per case by default (the global impression names the diagnosis)
        assert doc["results"][name]["report_gen"]["per_case"] is True
        lo, hi = row["probe_ci"]
        assert lo <= row["probe_accuracy"] <= hi
        assert row["chance_accuracy"] == 1 / 7 and 0 < row["chance@5"] <= 1
        assert set(doc["results"][name]) >= {"zeroshot", "vocabfine", "retrieval", "probe",
                                              "segment", "report_gen"}
    assert doc["summary"]["no pre-training"]["model"] == "no-pretraining"
    saved = json.loads((tmp_path / "comparison.json").read_text())
    assert saved["summary"].keys() == doc["summary"].keys()
    md = (tmp_path / "comparison.md").read_text()
    assert "| no pre-training |" in md and "| MedMAP |" in md and "BLEU-4" in md


def test_markdown_table_formats_missing_values():
    from medmap.downstream.compare import markdown_table

    md = markdown_table({"a": {"zeroshot_ci": [0.5, 0.75], "zeroshot_accuracy": 0.25,
                               "dice": None}})
    assert "| a | n/a | 0.500-0.750 | 0.250 | n/a |" in md


def test_a_failing_task_is_an_error_not_a_dash(pretrained, tiny_sim, vcache, tmp_path,
                                               monkeypatch):
    import pytest

    import medmap.downstream.report_gen as rg
    from medmap.downstream.common import TaskNotApplicable
    from medmap.downstream.compare import compare_pretraining

    def broken(*a, **k):
        raise ValueError("a bug in report generation")

    monkeypatch.setattr(rg, "report_generation", broken)
    with pytest.raises(ValueError, match="a bug in report generation"):
        compare_pretraining({"MedMAP": pretrained}, tiny_sim, tmp_path, split="val",
                            tasks=("report_gen",), cache_dir=vcache)

    def not_here(*a, **k):
        raise TaskNotApplicable("needs a Swin expert")

    monkeypatch.setattr(rg, "report_generation", not_here)
    doc = compare_pretraining({"MedMAP": pretrained}, tiny_sim, tmp_path, split="val",
                              tasks=("report_gen",), cache_dir=vcache)
    assert doc["results"]["MedMAP"]["report_gen"] == {"not_applicable": "needs a Swin expert"}


def test_resume_reads_finished_tasks_back_instead_of_running_them(pretrained, tiny_sim, vcache,
                                                                   tmp_path, monkeypatch):
    import medmap.downstream.probe as pr
    from medmap.downstream.compare import compare_pretraining

    first = compare_pretraining({"MedMAP": pretrained}, tiny_sim, tmp_path, split="val",
                                tasks=("probe",), cache_dir=vcache)
    stored = tmp_path / "MedMAP" / "probe" / "task_result.json"
    assert stored.is_file()

    def must_not_run(*a, **k):
        raise AssertionError("a finished task ran again")

    monkeypatch.setattr(pr, "probe", must_not_run)
    again = compare_pretraining({"MedMAP": pretrained}, tiny_sim, tmp_path, split="val",
                                tasks=("probe",), cache_dir=vcache, resume=True)
    assert again["summary"] == first["summary"]
    import pytest
    with pytest.raises(AssertionError, match="ran again"):     # without resume: runs again
        compare_pretraining({"MedMAP": pretrained}, tiny_sim, tmp_path, split="val",
                            tasks=("probe",), cache_dir=vcache)
    with pytest.raises(AssertionError, match="ran again"):     # other settings: runs again
        compare_pretraining({"MedMAP": pretrained}, tiny_sim, tmp_path, split="val",
                            tasks=("probe",), cache_dir=vcache, resume=True, seed=1)


def _doc(seed, dice_none, zs):
    from medmap.downstream.compare import summary_row

    row = summary_row({})
    row.update(zeroshot_auc=zs, zeroshot_accuracy=0.5, chance_accuracy=1 / 7, **{"chance@5": 0.1})
    results = {"MG-3D": {"segment": {"not_applicable": "no decoder for this encoder"}}} \
        if dice_none else {"MG-3D": {}}
    if not dice_none:
        row["dice"] = 0.7
    return {"seed": seed, "split": "test", "summary": {"MG-3D": row}, "results": results}


def test_merge_seeds_means_per_seed_values_and_keeps_every_na_reason():
    import pytest

    from medmap.config import UserError
    from medmap.downstream.compare import merge_seeds, seeds_markdown

    merged = merge_seeds([_doc(0, False, 0.8), _doc(1, True, 0.6)])
    zs = merged["summary"]["MG-3D"]["zeroshot_auc"]
    assert zs["seeds"] == [0.8, 0.6] and zs["mean"] == pytest.approx(0.7)
    # a value one seed lacks has no mean, and the reason is kept
    assert merged["summary"]["MG-3D"]["dice"] == {"seeds": [0.7, None], "mean": None}
    assert merged["not_applicable"] == {"MG-3D": {"segment": "no decoder for this encoder"}}
    md = seeds_markdown(merged, "t")
    assert "| MG-3D | 0.700 (0.800 / 0.600) |" in md
    assert "- n/a, MG-3D, segment: no decoder for this encoder" in md
    assert "## Seed 0" in md and "## Seed 1" in md
    other = _doc(1, False, 0.6)
    other["summary"] = {"MedMAP": other["summary"]["MG-3D"]}
    with pytest.raises(UserError, match="do not hold the same models"):
        merge_seeds([_doc(0, False, 0.8), other])
