"""The classical baseline: IBSI radiomics features (MIRP) + logistic regression.

The first question a reader of a medical-imaging paper asks is "better than radiomics?". This
module answers it on the same manifest, split and metrics as :func:`medmap.eval.evaluate`:

1. **Regions** per case (:func:`region_masks`), from the lesion mask (``region="mask"``) or from
   its bounding box only (``region="box"``, for box-annotated data such as LLD-MMRI): the whole
   lesion, its core (the lesion eroded by ``rim_voxels``), its rim (whole minus core) and a shell
   of surrounding tissue (``shell_voxels`` dilations of the lesion, minus the lesion).
2. **Tissue-referenced intensities.** MR signal has no absolute scale, so each sequence is
   divided by the mean signal of the shell (``normalise="shell"``): a feature then reads as
   "lesion-to-liver ratio", as radiologists describe lesions. Sequences whose shell mean is not
   positive are z-scored by the shell instead.
3. **IBSI features** of the whole lesion, core and rim of every sequence, computed by MIRP
   (``mirp.extract_features``; default family ``statistics``: the 18 IBSI intensity
   statistics; any MIRP family may be added, e.g. ``intensity_histogram`` or ``glcm``). A
   missing sequence gives NaN features, imputed by the training median.
4. **Model**: scikit-learn ``SimpleImputer`` -> ``StandardScaler`` -> ``LogisticRegressionCV``
   (multinomial, ``C`` chosen by stratified ``cv_folds``-fold cross-validation on the training
   cases, log-loss), fit on ``train_splits`` and scored on ``split`` with
   :func:`medmap.metrics.full_metrics` (bootstrap CIs, as ``evaluate``).

Why MIRP and not PyRadiomics: ``docs/method.md`` (MIRP installs from the registry as a wheel on
current Python / NumPy; PyRadiomics 3.1.0 ships only an sdist whose build fails there).

Example:
    >>> from medmap.baselines.radiomics import RadiomicsConfig, run_radiomics
    >>> doc = run_radiomics("sim/manifest.jsonl", "liver", "out/radiomics")   # doctest: +SKIP
    >>> doc["metrics"]["accuracy"], doc["metrics"]["ci"]["accuracy"]          # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Literal

import numpy as np

from medmap.config import ConfigError, UserError, to_dict
from medmap.linear import chosen_c, logistic_cv
from medmap.data.manifest import Case, Manifest, ManifestError

__all__ = ["RadiomicsConfig", "region_masks", "sequence_features", "case_features",
           "extract_features", "fit_logistic", "run_radiomics"]

SUB_REGIONS = ("whole", "core", "rim")


@dataclass
class RadiomicsConfig:
    """Settings of the radiomics baseline (saved with its results)."""

    region: Literal["mask", "box"] = "mask"     # the lesion mask, or its bounding box only
    mask_key: str = "lesion"                    # manifest ``masks`` entry of the lesion
    families: tuple[str, ...] = ("statistics",)  # MIRP base_feature_families
    sub_regions: tuple[str, ...] = SUB_REGIONS
    normalise: Literal["shell", "none"] = "shell"
    shell_voxels: int = 3
    rim_voxels: int = 1
    n_bins: int = 16                            # fixed bin number (texture / histogram families)
    cv_folds: int = 5
    Cs: tuple[float, ...] = (0.001, 0.01, 0.1, 1.0, 10.0, 100.0)
    max_iter: int = 5000

    def __post_init__(self) -> None:
        if self.region not in ("mask", "box"):
            raise ConfigError(f"radiomics region must be 'mask' or 'box', got {self.region!r}")
        bad = [r for r in self.sub_regions if r not in SUB_REGIONS]
        if bad or not self.sub_regions:
            raise ConfigError(f"radiomics sub_regions {list(self.sub_regions)}: choose from "
                              f"{list(SUB_REGIONS)}")
        if self.shell_voxels < 1 or self.rim_voxels < 1 or self.cv_folds < 2:
            raise ConfigError("radiomics shell_voxels and rim_voxels must be >= 1 and cv_folds "
                              ">= 2")
        self.families = tuple(self.families)
        self.sub_regions = tuple(self.sub_regions)
        self.Cs = tuple(float(c) for c in self.Cs)


# ---- regions and features of one sequence ---------------------------------------------------
def _box(mask: np.ndarray) -> np.ndarray:
    idx = np.argwhere(mask)
    lo, hi = idx.min(0), idx.max(0) + 1
    out = np.zeros_like(mask)
    out[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
    return out


def region_masks(lesion: np.ndarray, cfg: RadiomicsConfig) -> dict[str, np.ndarray]:
    """``whole`` / ``core`` / ``rim`` / ``shell`` boolean masks of a lesion mask (X, Y, Z).

    The core is the lesion eroded by ``rim_voxels`` (the whole lesion when erosion would leave
    fewer than 3 voxels); the shell is ``shell_voxels`` dilations minus the lesion.

    Example:
        >>> m = np.zeros((9, 9, 9), bool); m[2:7, 2:7, 2:7] = True
        >>> r = region_masks(m, RadiomicsConfig())
        >>> int(r["whole"].sum()), int(r["core"].sum()), int(r["rim"].sum())
        (125, 27, 98)
    """
    from scipy import ndimage as ndi

    whole = np.asarray(lesion) > 0
    if not whole.any():
        raise UserError("the lesion mask is empty")
    if cfg.region == "box":
        whole = _box(whole)
    core = ndi.binary_erosion(whole, iterations=cfg.rim_voxels)
    if core.sum() < 3:
        core = whole.copy()
    shell = ndi.binary_dilation(whole, iterations=cfg.shell_voxels) & ~whole
    return {"whole": whole, "core": core, "rim": whole & ~core if core is not whole else whole,
            "shell": shell}


def _normalised(image: np.ndarray, shell: np.ndarray, mode: str) -> np.ndarray:
    if mode == "none" or not shell.any():
        return image
    ref = image[shell]
    mean = float(ref.mean())
    if mean > 1e-6:
        return image / mean
    return (image - mean) / max(float(ref.std()), 1e-6)


# families whose features read only the voxels inside the mask (IBSI first-order features)
ROI_ONLY_FAMILIES = frozenset({"statistics", "intensity_histogram",
                               "intensity_volume_histogram"})


def _crop_to_masks(image: np.ndarray, masks: list[np.ndarray], margin: int = 1
                   ) -> tuple[np.ndarray, list[np.ndarray]]:
    """``image`` and ``masks`` cut to the bounding box of every mask's voxels plus
    ``margin`` voxels."""
    union = np.logical_or.reduce([np.asarray(m, bool) for m in masks])
    idx = np.argwhere(union)
    if not len(idx):
        return image, masks
    lo = np.maximum(idx.min(0) - margin, 0)
    hi = np.minimum(idx.max(0) + 1 + margin, image.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    return image[box], [m[box] for m in masks]


def _mirp_features(image: np.ndarray, masks: list[np.ndarray], spacing: Sequence[float],
                   cfg: RadiomicsConfig) -> list[dict[str, float]]:
    """One dict of MIRP feature values per mask (same image).

    When every family reads only the voxels inside the mask (the default, ``statistics``),
    the image and masks are first cropped to the masks' bounding box: the same values, 1.8x
    faster on the demo's volumes. Other families (local intensity reads a sphere around each
    voxel) see the whole image."""
    import mirp

    if set(cfg.families) <= ROI_ONLY_FAMILIES:
        image, masks = _crop_to_masks(image, masks)

    logging.getLogger("mirp").setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prev = logging.root.manager.disable
        logging.disable(logging.INFO)          # MIRP logs every job at INFO
        try:
            tables = mirp.extract_features(
                image=np.ascontiguousarray(image, dtype=np.float32),
                mask=[m.astype(np.uint8) for m in masks], image_modality="mr",
                image_voxel_spacing=tuple(float(s) for s in spacing),
                base_feature_families=list(cfg.families),
                base_discretisation_method="fixed_bin_number",
                base_discretisation_n_bins=cfg.n_bins)
        finally:
            logging.disable(prev)
    table = tables[0]
    keep = [c for c in table.columns if not c.startswith(("image_", "sample_"))]
    return [{c: float(v) for c, v in zip(keep, row)} for row in table[keep].to_numpy(float)]


def sequence_features(image: np.ndarray, lesion: np.ndarray, spacing: Sequence[float],
                      cfg: RadiomicsConfig | None = None) -> dict[str, float]:
    """``{"<sub-region>:<feature>": value}`` of one sequence (X, Y, Z) and its lesion mask on
    the same grid, ``spacing`` in mm.

    Example:
        >>> img = np.ones((12, 12, 12), np.float32); m = np.zeros((12, 12, 12), bool)
        >>> m[3:9, 3:9, 3:9] = True; img[m] = 2.0          # lesion twice as bright as the tissue
        >>> round(sequence_features(img, m, (1, 1, 1))["whole:stat_mean"], 3)   # doctest: +SKIP
        2.0
    """
    cfg = cfg or RadiomicsConfig()
    regions = region_masks(lesion, cfg)
    image = _normalised(np.asarray(image, np.float32), regions["shell"], cfg.normalise)
    rows = _mirp_features(image, [regions[r] for r in cfg.sub_regions], spacing, cfg)
    return {f"{r}:{k}": v for r, row in zip(cfg.sub_regions, rows) for k, v in row.items()}


# ---- cases -----------------------------------------------------------------------------------
def _on_grid(mask, image) -> np.ndarray:
    """The mask resampled (nearest) onto the image's voxel grid via the two affines."""
    if mask.array.shape == image.array.shape and np.allclose(mask.affine, image.affine,
                                                              atol=1e-3):
        return mask.array > 0
    from scipy.ndimage import affine_transform

    m = np.linalg.inv(mask.affine) @ image.affine          # image voxel -> mask voxel
    out = affine_transform((mask.array > 0).astype(np.float32), m[:3, :3], m[:3, 3],
                           output_shape=image.array.shape, order=0)
    return out > 0.5


def case_features(case: Case, modalities: Sequence[str],
                  cfg: RadiomicsConfig | None = None) -> dict[str, float]:
    """``{"<modality>:<sub-region>:<feature>": value}`` of one (resolved) case; the features
    of a missing modality are absent. Raises :class:`ManifestError` naming the case and the
    field when the lesion mask is missing or empty."""
    from medmap.data.io import read_volume

    cfg = cfg or RadiomicsConfig()
    mpath = case.masks.get(cfg.mask_key)
    if not mpath:
        raise ManifestError([f"case {case.case_id!r}: masks.{cfg.mask_key}: missing; the "
                             "radiomics baseline computes its features inside the lesion "
                             "(give a lesion mask, or a box mask with --region box)"])
    mask = read_volume(mpath)
    out: dict[str, float] = {}
    for mod in modalities:
        if mod not in case.modalities:
            continue
        img = read_volume(case.modalities[mod])
        lesion = _on_grid(mask, img)
        if not lesion.any():
            raise ManifestError([f"case {case.case_id!r}: masks.{cfg.mask_key}: empty on the "
                                 f"{mod} grid; check that the mask overlaps the volume"])
        spacing = np.linalg.norm(img.affine[:3, :3], axis=0)
        feats = sequence_features(img.array, lesion, spacing, cfg)
        out.update({f"{mod}:{k}": v for k, v in feats.items()})
    return out


def _case_job(args: tuple[Case, list[str], dict[str, Any]]) -> dict[str, float]:
    case, mods, cfg = args
    return case_features(case, mods, RadiomicsConfig(**cfg))


# extract_features: cases each spawned worker must have to pay back its start
MIN_CASES_PER_WORKER = 40


def extract_features(cases: Sequence[Case], modalities: Sequence[str],
                     cfg: RadiomicsConfig | None = None, workers: int | None = None,
                     progress: bool = False, pool=None) -> tuple[np.ndarray, list[str]]:
    """Feature matrix (N, F) of resolved ``cases`` (NaN where a modality is missing) and the F
    feature names, in a stable order; ``workers`` processes (None: one per CPU core, but only
    as many as have :data:`MIN_CASES_PER_WORKER` cases each, half as many with ``pool``: a
    ``ProcessPoolExecutor`` shared with the run's other jobs, whose workers start
    once)."""
    from tqdm.auto import tqdm

    from medmap.train.engine import available_cpus

    cfg = cfg or RadiomicsConfig()
    if workers is None:
        # a spawned worker pays ~3-4 s of imports (MIRP, pandas) before its first case (~0.2 s
        # each): 24 brain cases took 5.6 s in this process against 6.8 s with 2 workers
        # a shared pool pays its start once for several jobs: half as many cases suffice
        per_worker = MIN_CASES_PER_WORKER // (2 if pool is not None else 1)
        workers = max(1, min(available_cpus(), len(cases) // per_worker))
    jobs = [(c, list(modalities), to_dict(cfg)) for c in cases]
    if workers > 1 and len(jobs) > 1:
        def run(executor):
            return list(tqdm(executor.map(_case_job, jobs, chunksize=4), total=len(jobs),
                             disable=not progress, desc="radiomics", unit="case"))

        if pool is not None:
            rows = run(pool)
        else:
            with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as own:
                rows = run(own)
    else:
        rows = [_case_job(j) for j in tqdm(jobs, disable=not progress, desc="radiomics",
                                           unit="case")]
    names = sorted({k for r in rows for k in r},
                   key=lambda k: (list(modalities).index(k.split(":")[0]), k))
    X = np.array([[r.get(k, np.nan) for k in names] for r in rows], dtype=np.float64)
    return X.reshape(len(rows), len(names)), names


# ---- model and scoring -----------------------------------------------------------------------
def fit_logistic(X: np.ndarray, y: np.ndarray, cfg: RadiomicsConfig | None = None,
                 seed: int = 0):
    """A fitted scikit-learn pipeline: median imputation, standardisation and a multinomial
    logistic regression whose ``C`` is chosen by stratified cross-validation on (X, y)."""
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    cfg = cfg or RadiomicsConfig()
    if np.unique(y).size < 2:
        raise UserError("the radiomics baseline needs training cases of at least two classes")
    clf = logistic_cv(y, cfg.Cs, cfg.cv_folds, seed, cfg.max_iter, "radiomics baseline")
    X = np.where(np.isfinite(X), X, np.nan)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module="sklearn")
        warnings.filterwarnings("ignore", message=".*converge.*")   # notes at extreme C
        return make_pipeline(SimpleImputer(strategy="median", keep_empty_features=True),
                             StandardScaler(), clf).fit(X, y)


def _chosen_c(pipe) -> float:
    return chosen_c(pipe[-1])


def run_radiomics(manifest_path: str | Path, organ: str, out_dir: str | Path | None = None,
                  cfg: RadiomicsConfig | None = None, *, split: str = "test",
                  train_splits: Sequence[str] = ("train", "val"), n_boot: int = 1000,
                  seed: int = 0, workers: int | None = None, progress: bool = False,
                  features: tuple[np.ndarray, list[str], list[Case]] | None = None,
                  pool=None) -> dict[str, Any]:
    """Fit the baseline on ``train_splits`` of ``organ``'s labelled cases and score ``split``.

    Writes ``radiomics.json`` (settings, chosen C, :func:`~medmap.metrics.full_metrics` with
    bootstrap CIs, per-case predictions) and ``features.csv`` into ``out_dir`` when given;
    returns the document. ``features``: a precomputed ``(X, names, cases)`` (the ablation fits
    the same features once per seed). ``pool``: worker processes shared with the run's other
    jobs (:func:`extract_features`).
    """
    from medmap.data.vocab import get_organ
    from medmap.metrics import full_metrics

    cfg = cfg or RadiomicsConfig()
    spec = get_organ(organ)
    if features is None:
        manifest = Manifest.load(manifest_path).select(organ=organ)
        cases = [c for c in manifest.resolved() if c.label is not None
                 and c.split in (*train_splits, split)]
        present = {m for c in cases for m in c.modalities}
        mods = [m for m in spec.modalities if m in present]
        X, names = extract_features(cases, mods, cfg, workers, progress, pool)
    else:
        X, names, cases = features
    y = np.array([c.label_index for c in cases])
    train = np.array([c.split in train_splits for c in cases])
    test = np.array([c.split == split for c in cases])
    if not train.any() or not test.any():
        raise ManifestError([f"the radiomics baseline needs labelled {organ} cases in "
                             f"{list(train_splits)} and in '{split}' of {manifest_path}"])
    pipe = fit_logistic(X[train], y[train], cfg, seed)
    probs = np.zeros((int(test.sum()), len(spec.classes)))
    probs[:, pipe.classes_] = pipe.predict_proba(np.where(np.isfinite(X[test]), X[test], np.nan))
    metrics = full_metrics(y[test], probs, spec.classes, n_boot=n_boot, seed=seed)
    tcases = [c for c, t in zip(cases, test) if t]
    doc = {"baseline": "radiomics", "organ": organ, "split": split,
           "train_splits": list(train_splits), "n_train": int(train.sum()),
           "n_features": len(names), "config": to_dict(cfg), "C": _chosen_c(pipe),
           "library": _mirp_version(), "metrics": metrics,
           "cases": [{"case_id": c.case_id, "label": c.label,
                      "predicted": spec.classes[int(p.argmax())],
                      "probs": [round(float(v), 6) for v in p]} for c, p in zip(tcases, probs)]}
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "radiomics.json").write_text(json.dumps(_finite(doc), indent=2, allow_nan=False),
                                            encoding="utf-8")
        _write_features(out / "features.csv", cases, names, X)
        doc["files"] = {"json": str(out / "radiomics.json"), "features": str(out / "features.csv")}
    return doc


def _mirp_version() -> str:
    from importlib.metadata import version

    return f"mirp {version('mirp')}"


def _finite(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite(v) for v in x]
    return None if isinstance(x, float) and not math.isfinite(x) else x


def _write_features(path: Path, cases: Sequence[Case], names: list[str], X: np.ndarray) -> None:
    import csv

    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["case_id", "split", "label", *names])
        for c, row in zip(cases, X):
            w.writerow([c.case_id, c.split, c.label, *[f"{v:.6g}" for v in row]])
