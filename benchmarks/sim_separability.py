"""How separable are MedMoM-Sim classes from one sequence versus all sequences together?

Generates cases in memory with :func:`medmap.data.sim.simulate_case` (no missing phases),
extracts lesion-region intensity statistics per sequence from the lesion mask, and reports the
5-fold stratified cross-validated accuracy of a standardised logistic regression trained on
each single sequence alone versus all sequences concatenated. A useful benchmark has all
sequences clearly beating every single one (classes overlap within any one sequence).

Usage::

    python benchmarks/sim_separability.py --organ liver --cases 350 --size 48 --seed 0

Features per sequence (v = image, L = lesion mask, D_k = L dilated k voxels):
mean, std, p10, p50, p90 of v[L]; mean of the lesion core (L eroded once) and inner rim
(L minus core); mean of the perilesional shell D_1 - L; mean of the background ring
D_4 - D_2 ("liver or background"); the lesion, core, rim, p10, p90 and shell means divided by
the background ring. Shape features shared by all sequences: number of connected components
and log lesion volume (counted once in the all-sequence set). With ``--manifest`` on the
brain, one more set: the log ratio of the lesion's mean signal after and before contrast
(T1C / T1WI, the enhancement the generator draws per class), alone.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace

import numpy as np
from scipy import ndimage

from medmap.data.sim import SimConfig, _plan, simulate_case
from medmap.data.vocab import get_organ

_BALL = ndimage.generate_binary_structure(3, 1)


def region_masks(mask: np.ndarray) -> dict[str, np.ndarray]:
    """Lesion, core, inner rim, perilesional shell and background ring (boolean)."""
    les = mask > 0
    core = ndimage.binary_erosion(les, _BALL)
    d1 = ndimage.binary_dilation(les, _BALL)
    d2 = ndimage.binary_dilation(d1, _BALL)
    d4 = ndimage.binary_dilation(d2, _BALL, iterations=2)
    return dict(les=les, core=core if core.any() else les, rim=les & ~core if (les & ~core).any() else les,
                shell=d1 & ~les, bg=d4 & ~d2)


PHASE_FEATURES = ("mean", "std", "p10", "p50", "p90", "core", "rim", "shell", "bg",
                  "mean/bg", "core/bg", "rim/bg", "p10/bg", "p90/bg", "shell/bg")
SHAPE_FEATURES = ("n_components", "log_volume")


def phase_features(vol: np.ndarray, regions: dict[str, np.ndarray]) -> list[float]:
    les = vol[regions["les"]]
    p10, p50, p90 = np.percentile(les, [10, 50, 90])
    m = {k: float(vol[regions[k]].mean()) for k in ("core", "rim", "shell", "bg")}
    bg = max(m["bg"], 1e-3)
    mean = float(les.mean())
    return [mean, float(les.std()), p10, p50, p90, m["core"], m["rim"], m["shell"], m["bg"],
            mean / bg, m["core"] / bg, m["rim"] / bg, p10 / bg, p90 / bg, m["shell"] / bg]


def shape_features(mask: np.ndarray) -> list[float]:
    _, n = ndimage.label(mask > 0)
    return [float(n), float(np.log1p((mask > 0).sum()))]


def build_dataset(organ: str, cases: int, size: int, seed: int, progress: bool = True):
    """(features per modality (n, f), shape features (n, 2), labels (n,), seconds per case).

    Modalities that some generated case lacks are left out (with a note on stderr).
    """
    spec = get_organ(organ)
    cfg = replace(SimConfig(), size=size, p_missing=0.0)
    plan = _plan(organ, cases, seed, cfg.split_fractions)
    feats = {m: [] for m in spec.modalities}
    shape, labels = [], []
    t0 = time.perf_counter()
    for i, (label, _split) in enumerate(plan):
        case = simulate_case(organ, i, label, cfg, seed)
        regions = region_masks(case.mask)
        for m in spec.modalities:
            feats[m].append(phase_features(case.volumes[m], regions) if m in case.volumes else None)
        shape.append(shape_features(case.mask))
        labels.append(spec.class_index(label))
        if progress and (i + 1) % 50 == 0:
            print(f"  {i + 1}/{cases} cases, {(time.perf_counter() - t0) / (i + 1):.3f} s/case",
                  file=sys.stderr, flush=True)
    dt = (time.perf_counter() - t0) / max(cases, 1)
    missing = [m for m, v in feats.items() if any(f is None for f in v)]
    if missing:
        print(f"note: left out modalities missing from some cases: {', '.join(missing)}",
              file=sys.stderr)
    return ({m: np.asarray(v, np.float64) for m, v in feats.items() if m not in missing},
            np.asarray(shape), np.asarray(labels), dt)


def cv_accuracy(x: np.ndarray, y: np.ndarray, seed: int, folds: int = 5) -> tuple[float, float]:
    """Mean and std of the stratified k-fold accuracy of a standardised logistic regression."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, C=1.0))
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    scores = cross_val_score(model, x, y, cv=cv, n_jobs=1)
    return float(scores.mean()), float(scores.std())


def manifest_dataset(manifest: str, organ: str):
    """(features (n, sequences, 15), NaN where a case lacks a sequence; shape features (n, 2);
    labels (n,); splits (n,); the sequences, in the features' order) of one organ's cases in
    a manifest with ``masks: {lesion: ...}`` (sequences: those present in any case). Read with
    medmap's own manifest and volume readers, so NIfTI, NRRD and DICOM series all work; bad
    input exits naming the case."""
    from medmap.config import UserError
    from medmap.data.io import read_volume
    from medmap.data.manifest import Manifest

    spec = get_organ(organ)
    try:
        cases = Manifest.load(manifest).select(organ=organ).resolved()
    except UserError as e:
        raise SystemExit(str(e)) from None
    if not cases:
        raise SystemExit(f"{manifest}: no {organ} cases; check --organ")
    present = [m for m in spec.modalities if any(m in c.modalities for c in cases)]
    feats, shape, labels, splits = [], [], [], []
    for c in cases:
        if "lesion" not in c.masks:
            raise SystemExit(f"{manifest}: case {c.case_id} has no masks.lesion; this benchmark "
                             "reads lesion statistics from the lesion mask: add the mask's path "
                             "as masks.lesion, or leave the case out")
        if c.label is None or c.label not in spec.classes:
            raise SystemExit(f"{manifest}: case {c.case_id} has label {c.label!r}; use one of "
                             f"{list(spec.classes)}")
        try:
            mask = np.asarray(read_volume(c.masks["lesion"]).array)
            if not (mask > 0).any():
                raise ValueError(f"masks.lesion {c.masks['lesion']} is empty (no voxel > 0); "
                                 "fix the mask or leave the case out")
            regions = region_masks(mask)
            feats.append([phase_features(np.asarray(read_volume(c.modalities[m]).array,
                                                    np.float32), regions)
                          if m in c.modalities else [np.nan] * len(PHASE_FEATURES)
                          for m in present])
        except (UserError, ValueError) as e:
            raise SystemExit(f"case {c.case_id}: {e}") from None
        shape.append(shape_features(mask))
        labels.append(spec.class_index(c.label))
        splits.append(c.split)
    return (np.asarray(feats, np.float64), np.asarray(shape), np.asarray(labels),
            np.asarray(splits), present)


# post-contrast sequence -> its pre-contrast partner (the same sequence before gadolinium): their
# lesion signals' ratio is the enhancement, which the brain generator draws per class
CONTRAST_PAIRS = {"brain": ("T1C", "T1WI")}


def split_accuracy(manifest: str, organ: str) -> dict[str, float]:
    """Test accuracy of a standardised logistic regression fitted on the manifest's train + val
    cases, per feature set (missing sequences imputed by the training mean)."""
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    feats, shape, y, split, present = manifest_dataset(manifest, organ)
    fit, test = split != "test", split == "test"
    if not test.any() or len(np.unique(y[fit])) < 2:
        raise SystemExit(f"{manifest}: needs test cases and two classes among train + val")
    absolute = list(range(PHASE_FEATURES.index("mean/bg")))
    ratios = list(range(PHASE_FEATURES.index("mean/bg"), len(PHASE_FEATURES)))
    sets = {"absolute intensities": absolute, "tissue-referenced ratios": ratios,
            "both": absolute + ratios}
    xs = {name: np.hstack([feats[:, :, idx].reshape(len(y), -1), shape])
          for name, idx in sets.items()}                          # (n, modalities * f + 2)
    post, pre = CONTRAST_PAIRS.get(organ, (None, None))
    if post in present and pre in present:   # the lesion's post / pre-contrast signal, alone
        mean = PHASE_FEATURES.index("mean")
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.log(feats[:, present.index(post), mean] / feats[:, present.index(pre), mean])
        if np.isfinite(r[fit]).sum() >= 2:    # (positive signal in at least two fitted cases)
            xs[f"{post} / {pre} lesion mean (log), alone"] = np.where(np.isfinite(r), r,
                                                                      np.nan)[:, None]
    out = {}
    for name, x in xs.items():
        model = make_pipeline(SimpleImputer(), StandardScaler(),
                              LogisticRegression(max_iter=5000))
        model.fit(x[fit], y[fit])
        out[name] = float((model.predict(x[test]) == y[test]).mean())
    print(f"organ={organ} manifest={manifest} fit on {int(fit.sum())} train + val cases, "
          f"scored on {int(test.sum())} test cases")
    print('| features (+ lesion count and volume, except "alone") | test accuracy |\n|---|---|')
    for name, acc in out.items():
        print(f"| {name} | {acc:.3f} |")
    return out


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--organ", default="liver")
    ap.add_argument("--cases", type=int, default=350)
    ap.add_argument("--size", type=int, default=48)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--manifest", default=None,
                    help="score on this manifest's test split instead of generated cases")
    args = ap.parse_args(argv)
    if args.manifest:
        return split_accuracy(args.manifest, args.organ)

    spec = get_organ(args.organ)
    feats, shape, y, dt = build_dataset(args.organ, args.cases, args.size, args.seed, not args.quiet)
    n_classes = len(spec.classes)
    counts = np.bincount(y, minlength=n_classes)
    results: dict[str, tuple[float, float]] = {}
    for m in feats:
        results[m] = cv_accuracy(np.hstack([feats[m], shape]), y, args.seed)
    results["all phases"] = cv_accuracy(np.hstack([*feats.values(), shape]), y, args.seed)
    results["shape only"] = cv_accuracy(shape, y, args.seed)

    print(f"organ={args.organ} cases={args.cases} size={args.size} seed={args.seed} "
          f"classes={n_classes} (per class {counts.min()}-{counts.max()}; chance "
          f"{counts.max() / counts.sum():.1%}) generation {dt:.3f} s/case")
    print(f"{'input':<12} {'accuracy':>9} {'± std':>7}")
    for k, (mu, sd) in results.items():
        print(f"{k:<12} {mu:>9.1%} {sd:>7.1%}")
    best = max(results[m][0] for m in feats)
    print(f"all phases - best single phase: {100 * (results['all phases'][0] - best):+.1f} points")
    return {k: v[0] for k, v in results.items()}


if __name__ == "__main__":
    main()
