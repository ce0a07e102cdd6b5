"""VolumeCache keys / hits and the pair / case datasets with their collate functions."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import medmap.data.cache as dcache
from medmap.data.cache import VolumeCache
from medmap.data.datasets import (
    CaseDataset,
    ModalityPairDataset,
    collate_cases,
    collate_pairs,
)
from medmap.data.manifest import Case, Manifest
from medmap.data.preprocess import PreprocessConfig, Preprocessor

S = (16, 16, 16)


def write_nii(path: Path, seed: int = 0, shape=(20, 20, 20)) -> Path:
    rng = np.random.default_rng(seed)
    arr = np.zeros(shape, np.float32)
    arr[4:-4, 4:-4, 4:-4] = 100 + 10 * rng.standard_normal(tuple(s - 8 for s in shape))
    nib.save(nib.Nifti1Image(arr, np.eye(4)), str(path))
    return path


@pytest.fixture
def fresh_memo(monkeypatch):
    monkeypatch.setattr(dcache, "_HASH_MEMO", {})


def pre(**kw) -> Preprocessor:
    return Preprocessor(PreprocessConfig(size=S, **kw))


# ---- cache ----------------------------------------------------------------------------------
def test_cache_second_get_is_a_hit_without_decoding(tmp_path, count_reads, fresh_memo):
    p = write_nii(tmp_path / "a.nii.gz")
    cache = VolumeCache(tmp_path / "cache", pre())
    a = cache.get(p, "T1WI")
    b = cache.get(p, "T1WI")
    assert cache.stats() == {"hits": 1, "misses": 1, "files_hashed": 1, "rebuilt": 0}
    assert len(count_reads) == 1 and torch.equal(a, b)
    assert b.shape == (1, *S) and b.dtype == torch.float32
    entries = list((tmp_path / "cache").rglob("*.safetensors"))
    assert len(entries) == 1 and not list((tmp_path / "cache").rglob("*.tmp"))


def test_new_cache_on_same_dir_hits_without_rehashing(tmp_path, count_reads, monkeypatch):
    p = write_nii(tmp_path / "a.nii.gz")
    a = VolumeCache(tmp_path / "cache", pre()).get(p)
    monkeypatch.setattr(dcache, "_HASH_MEMO", {})                # as in a fresh process
    c2 = VolumeCache(tmp_path / "cache", pre())
    b = c2.get(p)
    assert c2.stats() == {"hits": 1, "misses": 0, "files_hashed": 0,    # on-disk hash memo
                          "rebuilt": 0}
    assert len(count_reads) == 1 and torch.equal(a, b)


def test_warm_fills_the_cache_in_process_when_small_and_with_workers_when_asked(
        tmp_path, fresh_memo, monkeypatch):
    """``warm``: a job too small to pay for spawning workers stays in this process (no pool
    is started); ``workers=2`` spawns them and writes entries equal to the in-process ones."""
    paths = [write_nii(tmp_path / f"v{i}.nii.gz", seed=i) for i in range(10)]
    reqs = [(p, "T1WI", "image", None, None) for p in paths]
    import concurrent.futures as cf

    class NoPool:
        def __init__(self, *a, **kw):
            raise AssertionError("a process pool was started for a small job")

    with monkeypatch.context() as m:
        m.setattr(cf, "ProcessPoolExecutor", NoPool)
        serial = VolumeCache(tmp_path / "serial", pre())
        assert len(reqs) < 2 * dcache.MIN_VOLUMES_PER_WORKER
        assert serial.warm(reqs) == 10 and serial.warm(reqs) == 0     # the second: all there
    from medmap.data import validate

    monkeypatch.setattr(validate, "_CHECKED", {})
    parallel = VolumeCache(tmp_path / "parallel", pre())
    assert parallel.warm(reqs, workers=2) == 10
    # the spawned workers' checks came back through the pool, for validation to reuse
    assert {k[1] for k in validate._CHECKED} == {str(p) for p in paths}
    for p in paths:
        a, b = serial.get(p, "T1WI"), parallel.get(p, "T1WI")
        assert torch.equal(a, b)
    assert parallel.stats()["hits"] == 10 and serial.stats()["hits"] == 10


class InlinePool:
    """A stand-in for a shared ProcessPoolExecutor: runs the jobs here and counts them."""

    def __init__(self):
        self.jobs = 0

    def map(self, fn, items, chunksize=1):
        items = list(items)
        self.jobs += len(items)
        return map(fn, items)


def test_warm_runs_in_a_shared_pool(tmp_path, fresh_memo, monkeypatch):
    """``warm(pool=...)``: a job big enough for workers runs in the given pool (one chunk per
    core) instead of starting its own, with the same entries."""
    import concurrent.futures as cf

    paths = [write_nii(tmp_path / f"v{i}.nii.gz", seed=i) for i in range(10)]
    reqs = [(p, "T1WI", "image", None, None) for p in paths]
    monkeypatch.setattr(cf, "ProcessPoolExecutor", None)         # no pool of its own
    pool = InlinePool()
    shared = VolumeCache(tmp_path / "shared", pre())
    assert shared.warm(reqs, workers=2, pool=pool) == 10 and pool.jobs == 2
    serial = VolumeCache(tmp_path / "serial", pre())
    serial.warm(reqs, workers=1)
    assert all(torch.equal(shared.get(p, "T1WI"), serial.get(p, "T1WI")) for p in paths)


@pytest.mark.parametrize("shared_pool", [False, True])
def test_warm_hands_the_files_it_read_to_validation(tmp_path, fresh_memo, monkeypatch,
                                                     shared_pool):
    """Warming reads every file it preprocesses; validation in the same process then reuses
    those reads (same problem, shape and affine as reading again) instead of decoding every
    volume a second time, and reads again a file that changed since."""
    import concurrent.futures as cf

    from medmap.data import validate

    monkeypatch.setattr(validate, "_CHECKED", {})
    paths = [write_nii(tmp_path / f"v{i}.nii.gz", seed=i) for i in range(10)]
    reqs = [(str(p), "T1WI", "image", None, None) for p in paths]
    cache = VolumeCache(tmp_path / "cache", pre())
    if shared_pool:
        monkeypatch.setattr(cf, "ProcessPoolExecutor", None)
        assert cache.warm(reqs, workers=2, pool=InlinePool()) == 10
    else:
        assert cache.warm(reqs) == 10
    assert cache._checks is None                     # only while warming
    expected = {str(p): validate._read_check(str(p)) for p in paths}
    reads = []
    real = validate._read_check
    monkeypatch.setattr(validate, "_read_check", lambda path: reads.append(path) or real(path))
    for p in paths:
        problem, shape, affine = validate._check_volume(str(p))
        e = expected[str(p)]
        assert problem == e[0] and shape == e[1] and np.array_equal(affine, e[2])
    assert reads == []
    write_nii(paths[0], seed=0, shape=(22, 22, 22))  # changed after warming: read again
    st = paths[0].stat()
    os.utime(paths[0], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert validate._check_volume(str(paths[0]))[1] == (22, 22, 22) and reads == [str(paths[0])]


def test_settings_change_the_key(tmp_path, fresh_memo):
    p = write_nii(tmp_path / "a.nii.gz")
    base = VolumeCache(tmp_path / "cache", pre())
    base.get(p, "T1WI")
    other = VolumeCache(tmp_path / "cache", pre(spacing=(2.0, 2.0, 2.0)))
    other.get(p, "T1WI")
    assert other.stats()["misses"] == 1 and other.stats()["hits"] == 0
    keys = {
        base.key(p, "T1WI"),
        other.key(p, "T1WI"),
        VolumeCache(tmp_path / "cache", pre(size_mode="crop_pad")).key(p, "T1WI"),
        VolumeCache(tmp_path / "cache", pre(percentiles=(1, 99))).key(p, "T1WI"),
        VolumeCache(tmp_path / "cache", pre(modality_intensity={"T1WI": "ct"})).key(p, "T1WI"),
        VolumeCache(tmp_path / "cache", pre(), storage_dtype="float16").key(p, "T1WI"),
        base.key(p, "T1WI", kind="mask"),
    }
    assert len(keys) == 7
    # a modality mapped to the same intensity mode shares the entry
    assert base.key(p, "T1WI") == base.key(p, "T2WI")


def test_modified_file_misses(tmp_path, count_reads, fresh_memo):
    p = write_nii(tmp_path / "a.nii.gz", seed=0)
    cache = VolumeCache(tmp_path / "cache", pre())
    a = cache.get(p)
    write_nii(p, seed=1)                                        # rewrite in place
    st = p.stat()                                               # memo is keyed on the stat:
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))    # make sure mtime moved
    b = cache.get(p)
    assert cache.misses == 2 and cache.hits == 0 and not torch.equal(a, b)
    assert cache.get(p).equal(b) and cache.hits == 1


def test_repeated_reads_reuse_the_key_until_the_file_or_settings_change(tmp_path, fresh_memo,
                                                                       monkeypatch):
    """Every epoch reads the same entries: the key (content hash, settings, JSON) is derived
    once per file and reused while the file's stat stamp and the settings stay the same."""
    p = write_nii(tmp_path / "a.nii.gz", seed=0)
    cache = VolumeCache(tmp_path / "cache", pre())
    derived = []
    real = VolumeCache.key_payload

    def counting(self, *a, **kw):
        derived.append(a[0])
        return real(self, *a, **kw)

    monkeypatch.setattr(VolumeCache, "key_payload", counting)
    a = cache.get(p, "T1WI")
    for _ in range(3):
        assert cache.get(p, "T1WI").equal(a)
    assert len(derived) == 1 and cache.hits == 3
    cache.get(p, "T2WI")                                # another modality: its own key
    assert len(derived) == 2
    write_nii(p, seed=1)                                # the file changes: a new key
    st = p.stat()
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    b = cache.get(p, "T1WI")
    assert len(derived) == 3 and not b.equal(a) and cache.misses == 2
    cache.preprocessor.cfg.percentiles = (1.0, 99.0)    # settings mutated in place: a new key
    c = cache.get(p, "T1WI")
    assert len(derived) == 4 and cache.misses == 3 and not c.equal(b)


def test_no_cache_dir_and_float16_and_corrupt_entry(tmp_path, count_reads, fresh_memo):
    p = write_nii(tmp_path / "a.nii.gz")
    nocache = VolumeCache(None, pre())
    nocache.get(p)
    nocache.get(p)
    assert nocache.misses == 2 and nocache.hits == 0 and nocache.files_hashed == 0

    half = VolumeCache(tmp_path / "c16", pre(), storage_dtype="float16")
    a = half.get(p)
    b = half.get(p)
    assert half.hits == 1 and b.dtype == torch.float32 and torch.allclose(a, b, atol=1e-2)

    c = VolumeCache(tmp_path / "c32", pre())
    ref = c.get(p)
    entry = c.entry_path(c.key(p))
    entry.write_bytes(entry.read_bytes()[:50])                  # truncated by a crash
    with pytest.warns(UserWarning, match=r"unusable \(unreadable.*stats\(\)\['rebuilt'\]"):
        again = c.get(p)
    assert c.misses == 2 and torch.equal(ref, again)
    assert c.stats()["rebuilt"] == 1                            # the rebuild is counted
    assert c.get(p).equal(ref) and c.hits == 1                  # rewritten entry is valid


def test_entry_of_another_key_is_rebuilt_not_served(tmp_path, fresh_memo):
    """A readable entry whose stored key is not the one asked for (a foreign file renamed into
    place) is recomputed and counted, never returned."""
    from safetensors.torch import save_file

    p = write_nii(tmp_path / "a.nii.gz")
    c = VolumeCache(tmp_path / "cache", pre())
    ref = c.get(p)
    entry = c.entry_path(c.key(p))
    save_file({"data": torch.zeros(1, *S)}, str(entry), metadata={"key": "{}"})
    with pytest.warns(UserWarning, match="written for another key"):
        assert torch.equal(c.get(p), ref)
    assert c.stats()["rebuilt"] == 1 and c.get(p).equal(ref) and c.hits == 1


def test_dicom_series_of_a_shared_folder_is_hashed_alone(tmp_path, fresh_memo):
    """``folder#<SeriesInstanceUID>``: only that series' slices are hashed; another series of
    the folder changing does not change its key."""
    pytest.importorskip("pydicom")
    from test_dicom_series import write_series

    rng = np.random.default_rng(0)
    vol = (100 + 10 * rng.standard_normal((10, 9, 8))).astype(np.float32)
    folder = tmp_path / "study"
    aff = np.diag([1.5, 1.5, 2.0, 1.0])
    a_uid, _, _ = write_series(folder, vol, aff, rng=rng, number=1)
    b_uid, _, b_files = write_series(folder, vol[:, :, :6], aff, rng=rng, number=2)
    c = VolumeCache(tmp_path / "cache", pre())
    h = c.content_hash(f"{folder}#{a_uid}")
    assert c.files_hashed == 8                                  # series a's 8 slices only
    assert c.content_hash(f"{folder}#{b_uid}") != h and c.files_hashed == 14
    img = c.get(f"{folder}#{a_uid}", "T1WI")
    assert img.shape == (1, *S) and torch.equal(img, pre()(f"{folder}#{a_uid}", "T1WI"))
    key = c.key(f"{folder}#{a_uid}")
    f = b_files[0]                                              # series b's slice changes
    f.write_bytes(f.read_bytes() + b"\0")
    assert c.key(f"{folder}#{a_uid}") == key
    assert c.get(f"{folder}#{a_uid}", "T1WI").equal(img) and c.hits == 1


def test_dicom_folder_hash_covers_every_file(tmp_path, fresh_memo):
    folder = tmp_path / "series"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.dcm").write_bytes(bytes([i]) * 100)
    c = VolumeCache(tmp_path / "cache", pre())
    h1 = c.content_hash(folder)
    assert c.files_hashed == 3 and c.content_hash(folder) == h1 and c.files_hashed == 3
    (folder / "1.dcm").write_bytes(b"\x09" * 100)
    st = (folder / "1.dcm").stat()
    os.utime(folder / "1.dcm", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert c.content_hash(folder) != h1


def test_mask_cache(tmp_path, fresh_memo):
    img = write_nii(tmp_path / "img.nii.gz")
    m = np.zeros((20, 20, 20), np.uint8)
    m[6:14, 6:14, 6:14] = 1
    mp = tmp_path / "m.nii.gz"
    nib.save(nib.Nifti1Image(m, np.eye(4)), str(mp))
    c = VolumeCache(tmp_path / "cache", pre())
    a = c.get_mask(mp, reference=img)
    b = c.get_mask(mp, reference=img)
    assert c.hits == 1 and torch.equal(a, b) and set(a.unique().tolist()) == {0.0, 1.0}


# ---- datasets -------------------------------------------------------------------------------
@pytest.fixture
def manifest(tmp_path) -> Manifest:
    """3 brain cases; c2 lacks T2FLAIR; reports vary; c3 unlabelled."""
    root = tmp_path / "data"
    root.mkdir()
    cases = []
    spec = {
        "c1": (["T1WI", "T2WI", "T2FLAIR"], {"T1WI": "t1 report", "T2WI": "t2 report"}, "benign"),
        "c2": (["T1WI", "T2WI"], {"global": "global report"}, "malignant"),
        "c3": (["T2FLAIR"], {"T2FLAIR": "flair report", "T1WI": "orphan"}, None),
    }
    for i, (cid, (mods, reports, label)) in enumerate(spec.items()):
        (root / cid).mkdir()
        paths = {}
        for j, mod in enumerate(mods):
            write_nii(root / cid / f"{mod}.nii.gz", seed=10 * i + j)
            paths[mod] = f"{cid}/{mod}.nii.gz"                     # relative to the manifest
        masks = {}
        if cid == "c1":
            nib.save(nib.Nifti1Image(np.ones((20, 20, 20), np.uint8), np.eye(4)),
                     str(root / cid / "lesion.nii.gz"))
            masks["lesion"] = f"{cid}/lesion.nii.gz"
        cases.append(Case(cid, "brain", "test" if cid == "c3" else "train", label, paths,
                          reports, masks))
    Manifest(cases).save(root / "cases.jsonl")
    return Manifest.load(root / "cases.jsonl")


def test_pair_dataset_items_and_collate(manifest, count_reads):
    ds = ModalityPairDataset(manifest, pre())
    assert len(count_reads) == 0                                 # lazy: nothing read yet
    # reports per own modality: c1 T1WI, c1 T2WI, c3 T2FLAIR (c3's T1WI report has no volume)
    assert len(ds) == 3
    assert [(c.case_id, m) for c, m, _, _ in ds.pairs] == [
        ("c1", "T1WI"), ("c1", "T2WI"), ("c3", "T2FLAIR")]
    assert len(ModalityPairDataset(manifest, pre(), use_global_report=True)) == 5
    assert len(ModalityPairDataset(manifest, pre(), modalities=["T2WI"])) == 1
    assert len(ModalityPairDataset(manifest, pre(), split="train")) == 2
    item = ds[2]
    assert item["image"].shape == (1, *S) and item["modality"] == "T2FLAIR"
    assert item["modality_index"] == 3 and item["report"] == "flair report"
    assert item["case_id"] == "c3"
    batch = next(iter(DataLoader(ds, batch_size=3, collate_fn=collate_pairs)))
    assert batch["image"].shape == (3, 1, *S)
    assert batch["modality_index"].tolist() == [0, 2, 3]
    assert batch["report"] == ["t1 report", "t2 report", "flair report"]
    assert batch["case_id"] == ["c1", "c1", "c3"] and batch["modality"][0] == "T1WI"


def test_pair_dataset_rejects_unknown_modality(tmp_path):
    p = write_nii(tmp_path / "x.nii.gz")
    bad = Case("x", "brain", "train", None, {"PET": str(p)}, {"PET": "r"})
    with pytest.raises(ValueError, match="PET.*vocabulary"):
        ModalityPairDataset([bad], pre())


def test_case_dataset_present_mask_and_collate(manifest, tmp_path, count_reads):
    mods = ["T1WI", "T2WI", "T2FLAIR"]
    cache = VolumeCache(tmp_path / "cache", pre())
    ds = CaseDataset(manifest, cache, modalities=mods, with_masks=True)
    assert len(count_reads) == 0 and len(ds) == 3
    it = ds[1]
    assert set(it["images"]) == {"T1WI", "T2WI"}
    assert it["present"].tolist() == [True, True, False] and it["present"].dtype == torch.bool
    assert it["label"].item() == 1 and it["label"].dtype == torch.long
    assert it["reports"] == {"global": "global report"} and it["mask"] is None
    assert ds[2]["label"].item() == -1

    batch = next(iter(DataLoader(ds, batch_size=3, collate_fn=collate_cases)))
    assert batch["images"].shape == (3, 3, 1, *S)
    assert batch["present"].tolist() == [[True, True, True], [True, True, False],
                                         [False, False, True]]
    assert (batch["images"][1, 2] == 0).all() and (batch["images"][2, :2] == 0).all()
    assert batch["images"][0, 0].abs().sum() > 0
    assert batch["label"].tolist() == [0, 1, -1]
    assert batch["case_id"] == ["c1", "c2", "c3"] and batch["modalities"] == mods
    assert batch["mask"].shape == (3, 1, *S) and batch["mask_present"].tolist() == [True, False,
                                                                                     False]
    assert batch["mask"][0].sum() > 0

    # second pass is served from the cache: no further decodes
    n = len(count_reads)
    _ = [ds[i] for i in range(len(ds))]
    assert len(count_reads) == n


def test_case_dataset_filters(manifest):
    ds = CaseDataset(manifest, pre(), modalities=["T1WI"], split="train", with_reports=False)
    assert [c.case_id for c in ds.cases] == ["c1", "c2"] and ds[0]["reports"] == {}
    only_flair = CaseDataset(manifest, pre(), modalities=["T2FLAIR"])
    assert [c.case_id for c in only_flair.cases] == ["c1", "c3"] and only_flair.skipped == ["c2"]
    full = CaseDataset(manifest, pre(), organ="brain")
    assert len(full.modalities) == 6
    with pytest.raises(ValueError, match="modalities"):
        CaseDataset(manifest, pre())


class _Repeat(torch.utils.data.Dataset):
    def __init__(self, cache, path, n):
        self.cache, self.path, self.n = cache, path, n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return self.cache.get(self.path, "T1WI")


def test_concurrent_workers_share_one_entry(tmp_path):
    p = write_nii(tmp_path / "a.nii.gz")
    cache = VolumeCache(tmp_path / "cache", pre())
    ref = Preprocessor(cache.cfg)(p)
    loader = DataLoader(_Repeat(cache, p, 6), batch_size=1, num_workers=2,
                        multiprocessing_context="fork")
    outs = [b[0] for b in loader]
    assert all(torch.equal(o, ref) for o in outs)
    assert len(list((tmp_path / "cache").rglob("*.safetensors"))) == 1
    assert not list((tmp_path / "cache").rglob("*.tmp"))
    assert VolumeCache(tmp_path / "cache", pre()).get(p, "T1WI").equal(ref)


def test_roi_crop_through_cache_and_dataset(manifest, tmp_path, fresh_memo):
    """preprocess.roi_mask: the cache key follows the organ mask; a case without it is named."""
    root = Path(manifest.root)
    organ = np.zeros((20, 20, 20), np.uint8)
    organ[4:12, 4:12, 4:12] = 1
    nib.save(nib.Nifti1Image(organ, np.eye(4)), str(root / "c1" / "organ.nii.gz"))
    organ2 = np.zeros_like(organ)
    organ2[8:16, 8:16, 8:16] = 1
    nib.save(nib.Nifti1Image(organ2, np.eye(4)), str(root / "c1" / "organ2.nii.gz"))
    cache = VolumeCache(tmp_path / "cache", pre(spacing=None, roi_mask="brain", roi_margin_mm=0))
    img = root / "c1" / "T1WI.nii.gz"
    a = cache.get(img, "T1WI", root / "c1" / "organ.nii.gz")
    b = cache.get(img, "T1WI", root / "c1" / "organ2.nii.gz")
    assert cache.misses == 2 and not torch.equal(a, b)          # another ROI, another entry
    assert torch.equal(cache.get(img, "T1WI", root / "c1" / "organ.nii.gz"), a)
    assert cache.hits == 1

    cases = [c for c in manifest.resolved() if c.case_id in ("c1", "c2")]
    cases[0].masks["brain"] = str(root / "c1" / "organ.nii.gz")
    ds = CaseDataset(cases, cache, modalities=["T1WI", "T2WI"], with_masks=True)
    item = ds[0]
    assert torch.equal(item["images"]["T1WI"], a)
    assert item["mask"].shape == (1, *S) and item["mask"].min() == 1   # lesion mask cropped too
    with pytest.raises(ValueError, match=r"case 'c2': masks.brain: missing.*roi_mask"):
        ds[1]
    with pytest.raises(ValueError, match=r"case 'c2': masks.brain: missing"):
        ModalityPairDataset(cases, cache, use_global_report=True)[2]
