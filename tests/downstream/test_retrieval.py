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
    saved = json.loads((tmp_path / "retrieval.json").read_text())
    assert saved["pair"]["report_to_volume"]["R@1"] == pair["report_to_volume"]["R@1"]
