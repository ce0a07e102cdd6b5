"""The volume cache under faults: a writer killed mid-write, and two processes sharing one
cache folder."""

from __future__ import annotations

import csv
import json
import multiprocessing as mp
import os
import signal
from pathlib import Path

import pytest
import torch

from medmap.data.cache import VolumeCache
from medmap.data.manifest import Manifest
from medmap.data.preprocess import PreprocessConfig, Preprocessor

CFG = PreprocessConfig(spacing=None, size=(32, 32, 32))


def _volumes(tiny_sim, n=3) -> list[str]:
    case = next(c for c in Manifest.load(tiny_sim).resolved() if c.organ == "liver")
    return [case.modalities[m] for m in list(case.modalities)[:n]]


def _die_while_writing(cache_dir: str, path: str, what: str) -> None:
    """Child: compute one entry, write half of the file (entry or hash memo), then SIGKILL
    itself before the write completes."""
    import safetensors.torch as st

    import medmap.data.cache as dcache

    torch.set_num_threads(1)
    dcache._HASH_MEMO.clear()                          # hash the file: the memo gets written
    real_save = st.save_file

    def half(data: bytes, target: str) -> None:
        with open(target, "wb") as f:
            f.write(data[: len(data) // 2])
            f.flush()
            os.fsync(f.fileno())
        os.kill(os.getpid(), signal.SIGKILL)

    if what == "entry":
        def dying_save(tensors, filename, metadata=None):
            real_save(tensors, filename, metadata=metadata)
            half(Path(filename).read_bytes(), filename)

        st.save_file = dying_save
    else:
        dcache._atomic_write_bytes = lambda p, data: half(data, str(p))
    VolumeCache(cache_dir, Preprocessor(CFG)).get(path, "T2WI")
    os._exit(0)                                        # not reached


@pytest.mark.parametrize("what", ["entry", "hash-memo"])
def test_a_writer_killed_mid_write_leaves_no_valid_looking_entry(tiny_sim, tmp_path, what):
    path = _volumes(tiny_sim, 1)[0]
    cache_dir = tmp_path / "cache"
    p = mp.get_context("fork").Process(target=_die_while_writing,
                                       args=(str(cache_dir), path, what))
    p.start()
    p.join(60)
    assert p.exitcode == -signal.SIGKILL
    fresh = VolumeCache(cache_dir, Preprocessor(CFG))
    import medmap.data.cache as dcache

    dcache._HASH_MEMO.clear()                          # as in a new process
    entry = fresh.entry_path(fresh.key(path, "T2WI"))
    assert not entry.exists()                          # only a temporary file may be left
    got = fresh.get(path, "T2WI")
    assert fresh.hits == 0 and fresh.misses == 1       # recomputed, never served half a file
    assert torch.equal(got, Preprocessor(CFG)(path, "T2WI"))
    assert fresh.get(path, "T2WI").equal(got) and fresh.hits == 1


def _evaluate_child(barrier, run: str, manifest: str, cache: str | None, out: str) -> None:
    torch.set_num_threads(1)                           # the same in every child: equal floats
    from medmap.cli import main

    if barrier is not None:
        barrier.wait(60)                               # both start together
    os._exit(main(["evaluate", run, "--manifest", manifest, "--split", "train", "--out", out,
                   "--n-boot", "20", "--n-cam-cases", "0", "--no-localise"]
                  + ([] if cache is None else ["--cache-dir", cache])))


def _rows(out: Path) -> list[dict]:
    with open(out / "predictions.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_two_processes_sharing_one_cache_get_identical_outputs(fault_model, tiny_sim, tmp_path):
    """Two ``medmap evaluate`` runs started together on one --cache-dir: the same predictions
    and metrics, equal to a run without a cache; one entry per volume, no temporary left."""
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(2)
    cache = tmp_path / "shared-cache"
    procs = [ctx.Process(target=_evaluate_child,
                         args=(barrier, str(fault_model), str(tiny_sim), str(cache),
                               str(tmp_path / f"out{i}"))) for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
    assert [p.exitcode for p in procs] == [0, 0]
    ref = ctx.Process(target=_evaluate_child, args=(None, str(fault_model), str(tiny_sim), None,
                                                    str(tmp_path / "nocache")))
    ref.start()
    ref.join(300)
    assert ref.exitcode == 0
    a, b, ref = (_rows(tmp_path / n) for n in ("out0", "out1", "nocache"))
    assert a == b == ref and len(a) > 0
    ma, mb = (json.loads((tmp_path / n / "metrics.json").read_text())["metrics"]
              for n in ("out0", "out1"))
    assert ma == mb
    train = Manifest.load(tiny_sim).select(organ="liver", split="train").cases
    n_vol = sum(m in c.modalities for c in train for m in ("T2WI", "C+A"))
    n_mask = sum("lesion" in c.masks for c in train)
    assert len(list(cache.rglob("*.safetensors"))) == n_vol + n_mask  # one entry per volume
    assert not list(cache.rglob("*.tmp"))
