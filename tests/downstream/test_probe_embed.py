"""Linear probe, full fine-tuning and embedding export on the tiny pre-trained model."""

import csv
import json

import numpy as np
import pytest
import torch


@pytest.mark.parametrize("mode", ["linear", "finetune"])
def test_probe(vlm, tiny_sim, vcache, tmp_path, mode):
    from medmap.downstream.probe import probe

    before = {k: v.clone() for k, v in vlm.model.state_dict().items()}
    res = probe(vlm, tiny_sim, tmp_path, mode=mode, epochs=1, eval_split="val",
                cache_dir=vcache)
    m = res["val"]
    assert m["n"] > 0 and 0.0 <= m["accuracy"] <= 1.0
    assert res["n_train"] > 0 and len(res["classes"]) == 7
    assert json.loads((tmp_path / f"probe-{mode}.json").read_text())["mode"] == mode
    assert all(torch.equal(before[k], v) for k, v in vlm.model.state_dict().items())


def test_embed_writes_files_with_shapes_and_ids(vlm, tiny_sim, vcache, tmp_path):
    from medmap.data.manifest import Manifest
    from medmap.downstream.embed import export_embeddings

    info = export_embeddings(vlm, tiny_sim, tmp_path, cache_dir=vcache)
    liver = [c for c in Manifest.load(tiny_sim) if c.organ == "liver"]
    n_vol = sum(m in c.modalities for c in liver for m in ("T2WI", "C+A"))
    n_txt = sum(1 for c in liver for t in c.reports.values() if t.strip())
    v = np.load(tmp_path / "volume_embeddings.npy")
    t = np.load(tmp_path / "text_embeddings.npy")
    assert v.shape == (n_vol, 32) and t.shape == (n_txt, 32) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    with (tmp_path / "volumes.csv").open() as f:
        vrows = list(csv.DictReader(f))
    with (tmp_path / "texts.csv").open() as f:
        trows = list(csv.DictReader(f))
    assert [int(r["row"]) for r in vrows] == list(range(n_vol))
    assert {r["case_id"] for r in vrows} == {c.case_id for c in liver}
    assert {r["modality"] for r in vrows} == {"T2WI", "C+A"}
    assert len(trows) == n_txt and {r["report_key"] for r in trows} >= {"global", "T2WI"}
    assert info["volume_embeddings"]["shape"] == [n_vol, 32]
    assert json.loads((tmp_path / "embeddings.json").read_text())["text_embeddings"]["shape"] == [n_txt, 32]
    # a row's volume embedding is the one encode_image gives for that volume
    from medmap.downstream.features import volume_embeddings

    one = [it for it in vlm.volume_items(tiny_sim) if it.case.case_id == vrows[3]["case_id"]
           and it.modality == vrows[3]["modality"]]
    np.testing.assert_allclose(volume_embeddings(vlm, one, vlm.loader(vcache))[0], v[3],
                               atol=1e-5)


def test_no_pretraining_model_needs_a_config_and_is_random(vlm):
    from medmap.downstream.vlm import load_vlm

    with pytest.raises(ValueError, match="needs a config"):
        load_vlm(None)
    rnd = load_vlm(None, like=vlm, seed=1)
    assert rnd.source is None and rnd.modalities == vlm.modalities
    assert rnd.preprocess == vlm.preprocess and rnd.text_model == vlm.text_model
    a, b = rnd.model.state_dict(), vlm.model.state_dict()
    assert a.keys() == b.keys() and not all(torch.equal(a[k], b[k]) for k in a)
