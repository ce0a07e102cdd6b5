"""Retrieval end to end on a tiny pre-trained model."""

import json


def test_retrieval_end_to_end(vlm, tiny_sim, vcache, tmp_path):
    from medmap.downstream.retrieval import retrieval

    res = retrieval(vlm, tiny_sim, split="train", out_dir=tmp_path, cache_dir=vcache)
    pair = res["pair"]
    n = pair["n"]
    assert n > 0 and pair["report_to_volume"]["n"] == n
    for d in ("report_to_volume", "volume_to_report"):
        m = pair[d]
        r = [m[f"R@{k}"] for k in (1, 5, 10, 50)]
        assert all(0.0 <= x <= 1.0 for x in r) and r == sorted(r)
        assert m["R@50"] == 1.0                              # 50 >= N: capped at N
        assert 1.0 <= m["median_rank"] <= n
    assert set(pair["per_modality"]) == {"T2WI", "C+A"}
    from medmap.data.manifest import Manifest

    n_cases = sum(c.organ == "liver" and c.split == "train" for c in Manifest.load(tiny_sim))
    assert res["case"]["n"] == n_cases
    lo, hi = res["per_sequence"]["report_to_volume"]["ci@5"]    # the headline has its CI
    assert lo <= res["per_sequence"]["report_to_volume"]["R@5"] <= hi
    saved = json.loads((tmp_path / "retrieval.json").read_text())
    assert saved["pair"]["report_to_volume"]["R@1"] == pair["report_to_volume"]["R@1"]


def test_per_sequence_ci_resamples_cases_and_averages_the_sequences():
    import numpy as np
    import pytest

    from medmap.downstream.retrieval import per_sequence_ci

    case = np.arange(40)
    assert per_sequence_ci({"T2WI": (case, np.ones(40)), "DWI": (case, np.ones(40))}) == [1, 1]
    # T2WI always hits, DWI never: every resample averages to exactly 0.5
    assert per_sequence_ci({"T2WI": (case, np.ones(40)),
                            "DWI": (case, np.zeros(40))}) == pytest.approx([0.5, 0.5])
    # half the cases hit in both sequences: an interval around 0.5, not a point
    half = (case % 2).astype(float)
    lo, hi = per_sequence_ci({"T2WI": (case, half), "DWI": (case, half)})
    assert 0.3 < lo < 0.5 < hi < 0.7
    assert per_sequence_ci({}) is None
