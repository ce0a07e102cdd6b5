"""MedMoM-Sim: the embedded multi-organ, multi-sequence MRI benchmark.

``simulate(out_dir, cases=N, size=S, seed=K)`` writes, per organ, ``N`` studies as NIfTI volumes
(one per MRI sequence; uncompressed ``.nii`` unless ``compress=True``), a lesion mask (manifest
``masks.lesion``), for the liver an organ mask (``masks.liver``, usable as
``PreprocessConfig.roi_mask``), one report per sequence plus a global impression, a stratified
train/val/test split, ``manifest.jsonl`` and ``DATASHEET.md``.

Example:
    >>> from medmap.data.sim import simulate
    >>> manifest = simulate("sim", cases=14, size=48, seed=0)       # doctest: +SKIP
    >>> sorted({c.organ for c in manifest})                        # doctest: +SKIP
    ['brain', 'liver']
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np

from medmap.data.manifest import Case, Manifest
from medmap.data.sim.common import SimCase, SimConfig
from medmap.data.vocab import GLOBAL_REPORT, SPLITS, get_organ

__all__ = ["simulate", "simulate_case", "SimConfig", "SimCase", "GENERATORS"]


def _generators() -> dict[str, Callable[[np.random.Generator, str, SimConfig], SimCase]]:
    from medmap.data.sim import brain, liver

    return {"liver": liver.simulate_case, "brain": brain.simulate_case}


GENERATORS = ("liver", "brain")
_ORGAN_SEED = {"liver": 1, "brain": 2}


def _plan(organ: str, n: int, seed: int, fractions: Sequence[float]) -> list[tuple[str, str]]:
    """(label, split) per case index: classes balanced round-robin; splits stratified by class.

    Cases are walked class by class and each takes the split of a low-discrepancy sequence
    (golden-ratio steps), so every split gets its fraction of each class and small benchmarks
    still have validation and test cases.
    """
    spec = get_organ(organ)
    rng = np.random.default_rng([seed, _ORGAN_SEED[organ], 0])
    labels = [spec.classes[i % len(spec.classes)] for i in range(n)]
    rng.shuffle(labels)
    order = sorted(range(n), key=lambda i: (spec.classes.index(labels[i]), i))
    cut_train, cut_val = fractions[0], fractions[0] + fractions[1]
    splits: list[str] = [""] * n
    for j, i in enumerate(order):
        u = (0.5 + j * 0.6180339887498949) % 1.0
        splits[i] = SPLITS[0] if u < cut_train else SPLITS[1] if u < cut_val else SPLITS[2]
    return list(zip(labels, splits))


def simulate_case(organ: str, index: int, label: str, cfg: SimConfig, seed: int) -> SimCase:
    """Generate one study in memory (a pure function of its arguments), missing phases dropped."""
    rng = np.random.default_rng([seed, _ORGAN_SEED[organ], index + 1])
    case = _generators()[organ](rng, label, cfg)
    spec = get_organ(organ)
    reference = next(m for m in spec.modalities if m in case.volumes)
    for m in list(case.volumes):
        if m != reference and rng.random() < cfg.p_missing:
            del case.volumes[m]
            case.reports.pop(m, None)
            case.meta.setdefault("missing", []).append(m)
    return case


def _write_case(args: tuple) -> Case:
    import nibabel as nib

    organ, index, label, split, cfg, seed, out_dir, compress = args
    case = simulate_case(organ, index, label, cfg, seed)
    case_id = f"{organ}_{index:04d}"
    folder = Path(out_dir) / organ / case_id
    folder.mkdir(parents=True, exist_ok=True)
    affine = np.diag([*case.spacing, 1.0])  # RAS+, voxel (i, j, k) -> (x, y, z) mm
    modalities: dict[str, str] = {}
    for m, vol in case.volumes.items():
        rel = f"{organ}/{case_id}/{m}.nii{'.gz' if compress else ''}"
        nib.save(nib.Nifti1Image(vol.astype(np.float32), affine), Path(out_dir) / rel)
        modalities[m] = rel
    mask_rel = f"{organ}/{case_id}/lesion_mask.nii.gz"
    nib.save(nib.Nifti1Image(case.mask.astype(np.uint8), affine), Path(out_dir) / mask_rel)
    masks = {"lesion": mask_rel}
    if case.organ_mask is not None:  # the organ's own mask (liver), for ROI cropping
        masks[organ] = f"{organ}/{case_id}/{organ}_mask.nii.gz"
        nib.save(nib.Nifti1Image(case.organ_mask.astype(np.uint8), affine),
                 Path(out_dir) / masks[organ])
    reports = {k: v for k, v in case.reports.items() if k in modalities or k == GLOBAL_REPORT}
    return Case(case_id, organ, split, label, modalities, reports, masks)


def simulate(
    out_dir: str | Path,
    cases: int | dict[str, int] = 60,
    size: int | dict[str, int] = 64,
    seed: int = 0,
    organs: Sequence[str] = ("liver", "brain"),
    config: SimConfig | None = None,
    workers: int | None = None,
    progress: bool = False,
    compress: bool = False,
) -> Manifest:
    """Write ``cases`` studies per organ (an int, or ``{organ: n}``) of ``size``^3 voxels (an
    int, or ``{organ: size}``) under ``out_dir``; returns the saved manifest.

    The sequences' volumes are written as uncompressed ``.nii`` (``compress=True``: ``.nii.gz``):
    their noise leaves gzip a 9% saving for a third of the simulation's CPU time and a
    decompression on every later read (measured at the demo's size). Masks are always gzipped
    (they shrink several hundred times).

    Deterministic for a given ``seed`` (and settings), whatever the number of ``workers``.
    """
    sizes = size if isinstance(size, dict) else {o: size for o in organs}
    base = config or SimConfig()
    cfgs = {o: replace(base, size=int(sizes[o])) for o in organs}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jobs = []
    counts = cases if isinstance(cases, dict) else {o: cases for o in organs}
    for organ in organs:
        get_organ(organ)
        for i, (label, split) in enumerate(_plan(organ, counts[organ], seed, base.split_fractions)):
            jobs.append((organ, i, label, split, cfgs[organ], seed, str(out), compress))
    workers = workers if workers is not None else min(len(jobs), os.cpu_count() or 1)
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            it = pool.map(_write_case, jobs, chunksize=1)
            written = list(_progress(it, len(jobs), progress))
    else:
        written = list(_progress(map(_write_case, jobs), len(jobs), progress))
    manifest = Manifest(written, out)
    manifest.save(out / "manifest.jsonl")
    _write_datasheet(out, organs, cfgs, counts, seed, written)
    return manifest


def _progress(it, total: int, enabled: bool):
    if not enabled:
        return it
    from tqdm import tqdm

    return tqdm(it, total=total, desc="simulate", unit="case")


def _write_datasheet(out: Path, organs, cfgs: dict[str, SimConfig], n: dict[str, int],
                     seed: int, cases: list[Case]):
    from medmap.data.sim import brain, liver

    sheets = {"liver": liver.DATASHEET, "brain": brain.DATASHEET}
    lines = [
        "# MedMoM-Sim datasheet",
        "",
        "Synthetic multi-sequence MRI studies with lesion masks and per-sequence reports,",
        "generated by `medmap data simulate`. Not patient data; for testing and benchmarking.",
        "",
        f"- cases per organ: {', '.join(f'{o} {k}' for o, k in n.items())}; "
        "volume size: " + ", ".join(f"{o} {c.size}^3" for o, c in cfgs.items())
        + f"; seed: {seed}",
        f"- realism knobs: {replace(next(iter(cfgs.values())), size=0)} (size per organ above)",
        "",
        "| organ | class | train | val | test |",
        "|---|---|---|---|---|",
    ]
    for organ in organs:
        for cls in get_organ(organ).classes:
            counts = [sum(c.organ == organ and c.label == cls and c.split == s for c in cases)
                      for s in SPLITS]
            lines.append(f"| {organ} | {cls} | " + " | ".join(map(str, counts)) + " |")
    lines.append("")
    for organ in organs:
        lines += [sheets[organ].strip(), ""]
    (out / "DATASHEET.md").write_text("\n".join(lines), encoding="utf-8")
