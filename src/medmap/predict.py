"""Predict with a fine-tuned MedMAP classifier on new studies.

``predict(model_dir, input, out_csv)`` accepts three kinds of ``input``:

* a manifest (``.jsonl`` / ``.csv``): every case of the model's organ (validated first);
* a case folder: one volume per modality, the file stem matched case-insensitively (and through
  :data:`~medmap.data.vocab.MODALITY_ALIASES`) to the model's modalities, e.g. ``T2WI.nii.gz``,
  ``c+a.nii.gz``, ``FLAIR.nrrd``; a sub-folder named after a modality is read as a DICOM series.
  Files matching no modality are listed in a warning and ignored;
* a single volume file (or a DICOM series folder, or ``folder#<SeriesInstanceUID>`` for one
  series of a folder holding several: the CLI's ``--series``): its modality is ``modality``
  (the CLI's ``--modality``) or else its file (folder) stem.

A model trained with ``preprocess.roi_mask`` (e.g. ``"liver"``: volumes cropped to the liver)
needs that organ mask per case: the manifest's ``masks.<roi>``, a file named ``<roi>``,
``<roi>_mask`` or ``mask_<roi>`` in a case folder, or ``roi`` (the CLI's ``--roi FILE``).

Only what the model folder stores is used: preprocessing settings, modalities, classes. Missing
modalities are allowed (the model masks them out) and listed per case. One CSV row per case:
``case_id, predicted, prob_<class>..., modalities_used, modalities_missing, label, source``
(modality lists joined with ``;``; ``label`` is the manifest's label when known).

Every volume is checked before use: an unreadable, truncated, 2D or 4D file, non-finite
voxels or a constant (blank) volume is a :class:`~medmap.data.io.VolumeReadError` naming the
case, the modality, the file and the fix. A manifest's reports play no part in prediction and
are not checked.

With ``cam_dir``, the Grad-CAM of the predicted class is written per case and modality as
``<cam_dir>/<case_id>/<modality>_cam.nii.gz`` on the source volume's own voxel grid (same shape
and affine), mapped back through :meth:`Preprocessor.invert`. The case folder's name is the
case id with characters other than letters, digits and ``+._-`` replaced by ``_`` and a
leading ``.`` by ``_`` (so ``..`` or ``../x`` stay inside ``cam_dir``); two cases whose names
collide get a short hash of their id appended.

Example:
    >>> from medmap.predict import predict
    >>> rows = predict("runs/finetune/model", "new_case/", "preds.csv")    # doctest: +SKIP
    >>> rows[0]["predicted"], rows[0]["modalities_missing"]                # doctest: +SKIP
    ('hepatic_cyst', 'C+V')
"""

from __future__ import annotations

import csv
import hashlib
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medmap.config import UserError

__all__ = ["predict", "predict_with_model", "PredictInputError", "prediction_row", "write_rows_csv",
           "match_modality", "resolve_input", "PredictCase"]

_VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".dcm")
_MANIFEST_SUFFIXES = (".jsonl", ".json", ".csv")


class PredictInputError(UserError):
    """The prediction input cannot be used; the message names the file / case and the fix."""


@dataclass
class PredictCase:
    """One study to predict: modality -> volume path (only the model's modalities), and the
    organ (ROI) mask when the model crops to one."""

    case_id: str
    volumes: dict[str, str]
    label: str | None = None
    source: str = ""
    roi: str | None = None
    reports: dict[str, str] | None = None     # read only by csa_text="report" models
    lesion: str | None = None                 # the lesion mask of models that read it


# ---- rows -----------------------------------------------------------------------------------
def prediction_row(case_id: str, probs: Sequence[float], classes: Sequence[str],
                   used: Sequence[str], missing: Sequence[str], label: str | None = None,
                   source: str | None = None) -> dict[str, Any]:
    """One output row (the CSV columns, in order)."""
    p = np.asarray(probs, dtype=np.float64)
    row: dict[str, Any] = {"case_id": case_id, "predicted": str(classes[int(p.argmax())])}
    for c, v in zip(classes, p):
        row[f"prob_{c}"] = float(v)
    row["modalities_used"] = ";".join(used)
    row["modalities_missing"] = ";".join(missing)
    row["label"] = "" if label is None else str(label)
    row["source"] = "" if source is None else str(source)
    return row


def write_rows_csv(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Write rows (same keys each, first row's order) as a CSV file."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fields = list(rows[0].keys()) if rows else ["case_id", "predicted"]
    with p.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in fields})
    return p


# ---- input resolution -----------------------------------------------------------------------
def _stem(p: Path) -> str:
    name = p.name
    low = name.lower()
    for s in _VOLUME_SUFFIXES:
        if low.endswith(s):
            return name[: -len(s)]
    return name


def match_modality(name: str, modalities: Sequence[str]) -> str | None:
    """The model modality ``name`` denotes: case-insensitive, then through MODALITY_ALIASES."""
    from medmap.data.vocab import MODALITY_ALIASES

    low = name.strip().lower()
    for m in modalities:
        if m.lower() == low:
            return m
    for alias, canon in MODALITY_ALIASES.items():
        if alias.lower() == low and canon in modalities:
            return canon
    return None


def _is_dicom_folder(p: Path) -> bool:
    files = [f for f in p.iterdir() if f.is_file() and not f.name.startswith(".")]
    return bool(files) and all(f.suffix.lower() == ".dcm" or "." not in f.name for f in files)


def _roi_names(roi_mask: str | None) -> set[str]:
    if roi_mask is None:
        return set()
    k = roi_mask.lower()
    return {k, f"{k}_mask", f"mask_{k}"}


def _case_folder(folder: Path, modalities: Sequence[str],
                 roi_mask: str | None = None, lesion_key: str | None = None) -> PredictCase:
    found: dict[str, list[Path]] = {}
    unknown: list[str] = []
    roi: Path | None = None
    lesion: Path | None = None
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        is_vol = entry.is_dir() or entry.name.lower().endswith(_VOLUME_SUFFIXES)
        if is_vol and _stem(entry).lower() in _roi_names(roi_mask):
            roi = entry
        if is_vol and _stem(entry).lower() in _roi_names(lesion_key):
            lesion = entry
        if is_vol and (entry == roi or entry == lesion):
            continue
        m = match_modality(_stem(entry), modalities) if is_vol else None
        if m is None:
            unknown.append(entry.name + ("/" if entry.is_dir() else ""))
        else:
            found.setdefault(m, []).append(entry)
    dup = {m: ps for m, ps in found.items() if len(ps) > 1}
    if dup:
        raise PredictInputError(
            f"case folder {folder}: several files for one modality ("
            + "; ".join(f"{m}: {', '.join(p.name for p in ps)}" for m, ps in dup.items())
            + "); keep one file per modality")
    if not found:
        raise PredictInputError(
            f"case folder {folder}: no file matches the model's modalities "
            f"({', '.join(modalities)}); name each volume after its modality, e.g. "
            f"{modalities[0]}.nii.gz (found: {', '.join(unknown) or 'nothing'})")
    if unknown:
        warnings.warn(f"case folder {folder}: ignoring {len(unknown)} file(s) that match none of "
                      f"the model's modalities ({', '.join(modalities)}): {', '.join(unknown)}",
                      stacklevel=4)
    return PredictCase(folder.name, {m: str(ps[0]) for m, ps in found.items()},
                       source=str(folder), roi=None if roi is None else str(roi),
                       lesion=None if lesion is None else str(lesion))


def _single_volume(path: Path, modalities: Sequence[str], modality: str | None,
                   name: str | None = None) -> PredictCase:
    stem = _stem(Path(name)) if name is not None else _stem(path)
    if modality is not None:
        m = match_modality(modality, modalities)
        if m is None:
            raise PredictInputError(f"{path}: --modality {modality!r} is not one of the model's "
                                    f"modalities ({', '.join(modalities)})")
    else:
        m = match_modality(stem, modalities)
        if m is None:
            raise PredictInputError(
                f"{path}: cannot tell the modality from the file name {stem!r}; pass "
                f"--modality with one of {', '.join(modalities)} (or rename the file, e.g. "
                f"{modalities[0]}.nii.gz)")
    return PredictCase(stem, {m: str(path)}, source=str(path))


def _manifest_cases(path: Path, modalities: Sequence[str], organ: str | None,
                    roi_mask: str | None = None, lesion_key: str | None = None
                    ) -> list[PredictCase]:
    from medmap.data.manifest import Manifest, ManifestError
    from medmap.data.validate import require_valid

    manifest = Manifest.load(path)
    other = [c.case_id for c in manifest.cases if organ and c.organ != organ]
    if other:
        warnings.warn(f"{path}: skipping {len(other)} case(s) of organs other than the model's "
                      f"{organ!r}: {other}", stacklevel=4)
    manifest = require_valid(manifest.select(organ=organ or None), path,   # reports: unused
                             required_masks=[k for k in (roi_mask, lesion_key) if k],
                             check_reports=False)
    cases = manifest.resolved()
    if not cases:
        raise ManifestError([f"no {organ} case; the model predicts {organ} cases"], path)
    out, none, ignored = [], [], set()
    for c in cases:
        vols = {m: c.modalities[m] for m in modalities if m in c.modalities}
        ignored |= set(c.modalities) - set(modalities)
        if not vols:
            none.append(c.case_id)
            continue
        out.append(PredictCase(c.case_id, vols, c.label, str(path),
                               roi=c.masks.get(roi_mask) if roi_mask else None,
                               reports=dict(c.reports),
                               lesion=c.masks.get(lesion_key) if lesion_key else None))
    if none:
        raise ManifestError([f"case {cid!r}: modalities: none of the model's modalities "
                             f"({', '.join(modalities)}); add one or drop the case"
                             for cid in none], path)
    if ignored:
        warnings.warn(f"{path}: modalities {sorted(ignored)} are not inputs of this model and are "
                      "ignored", stacklevel=4)
    return out


def resolve_input(input: str | Path, modalities: Sequence[str], organ: str | None = None,
                  modality: str | None = None, roi_mask: str | None = None,
                  roi: str | Path | None = None, lesion_key: str | None = None,
                  lesion: str | Path | None = None) -> list[PredictCase]:
    """The cases an input path denotes (see the module doc).

    ``roi_mask``: the model's ``preprocess.roi_mask`` (each case must then bring that organ
    mask); ``roi``: an explicit organ-mask file for a single volume or case folder.
    ``lesion_key``: the mask a model reads at inference (``MedMAPConfig.mask_key``; the ROI
    itself when both are the same key); ``lesion``: an explicit file of it.
    """
    cases = _resolve(Path(input), modalities, organ, modality, roi_mask, lesion_key)
    for flag, value, attr in (("--roi", roi, "roi"), ("--mask", lesion, "lesion")):
        if value is None:
            continue
        if not Path(value).exists():
            raise PredictInputError(f"{value}: {flag} file not found")
        if len(cases) != 1:
            raise PredictInputError(f"{input}: {flag} applies to a single volume or case "
                                    "folder; a manifest names each case's mask under masks")
        setattr(cases[0], attr, str(value))
    if lesion_key is not None:
        for c in cases:
            if c.lesion is None and lesion_key == roi_mask:
                c.lesion = c.roi
            if c.lesion is None:
                raise PredictInputError(
                    f"case {c.case_id!r}: the model reads the {lesion_key!r} mask at inference "
                    f"(mask pooling / region features) and none was found; pass --mask FILE "
                    f"or put {lesion_key}.nii.gz (or {lesion_key}_mask.nii.gz) in the case "
                    "folder")
    if roi_mask is not None:
        for c in cases:
            if c.roi is None:
                raise PredictInputError(
                    f"case {c.case_id!r}: the model crops every volume to the {roi_mask!r} "
                    f"organ mask (preprocess.roi_mask) and none was found; pass --roi FILE or "
                    f"put {roi_mask}.nii.gz (or {roi_mask}_mask.nii.gz) in the case folder")
    return cases


def _resolve(p: Path, modalities: Sequence[str], organ: str | None, modality: str | None,
             roi_mask: str | None, lesion_key: str | None = None) -> list[PredictCase]:
    from medmap.data.io import split_series

    folder, uid = split_series(p)
    if uid is not None:                                 # folder#<SeriesInstanceUID>
        return [_single_volume(p, modalities, modality, name=folder.name)]
    if not p.exists():
        raise PredictInputError(f"{p}: not found; give a manifest (.jsonl/.csv), a case folder "
                                "(one volume per modality) or a single volume file")
    if p.is_file() and p.name.lower().endswith(_MANIFEST_SUFFIXES):
        if modality is not None:
            raise PredictInputError(f"{p}: --modality applies to a single volume, not a manifest")
        return _manifest_cases(p, modalities, organ, roi_mask, lesion_key)
    if p.is_dir():
        if modality is not None or _is_dicom_folder(p):    # one DICOM series
            return [_single_volume(p, modalities, modality)]
        return [_case_folder(p, modalities, roi_mask, lesion_key)]
    if not p.name.lower().endswith(_VOLUME_SUFFIXES):
        raise PredictInputError(f"{p}: unsupported input; give a manifest (.jsonl/.csv), a case "
                                "folder, or a volume (.nii/.nii.gz/.nrrd, DICOM folder)")
    return [_single_volume(p, modalities, modality)]


# ---- prediction -----------------------------------------------------------------------------
def _safe(name: str) -> str:
    """A file-name-safe form of ``name``: one path component inside its folder, never ``.``,
    ``..`` or a hidden name (a leading ``.`` becomes ``_``)."""
    out = re.sub(r"[^A-Za-z0-9+._-]", "_", name)
    return re.sub(r"^\.", "_", out) or "_"


def _cam_folder(cam_dir: Path, case_id: str, used: dict[str, str]) -> Path:
    """``cam_dir/<safe case id>``, unique per case id within one run, always inside cam_dir."""
    name = _safe(case_id)
    if used.get(name, case_id) != case_id:   # another id maps to the same name
        name = f"{name}-{hashlib.sha1(case_id.encode('utf-8')).hexdigest()[:8]}"
    used[name] = case_id
    folder = cam_dir / name
    if folder.resolve().parent != cam_dir.resolve():     # defence in depth
        raise PredictInputError(f"case {case_id!r}: its CAM folder {folder} would lie outside "
                                f"{cam_dir}; rename the case")
    return folder


def _read_checked(case: PredictCase, modality: str, path: str):
    """The case's volume, read once and checked (3D, finite, not constant); a
    :class:`VolumeReadError` naming the case, the modality, the file and the fix otherwise."""
    from medmap.data.io import VolumeReadError, read_volume
    from medmap.data.validate import volume_problem

    tag = f"case {case.case_id!r}, modality {modality}"
    try:
        vol = read_volume(path)
    except VolumeReadError as e:
        raise VolumeReadError(f"{tag}: {e}") from None
    problem = volume_problem(vol.array)
    if problem:
        raise VolumeReadError(f"{tag}: {path}: {problem}")
    return vol


def predict(model_dir: str | Path, input: str | Path, out_csv: str | Path | None,
            cam_dir: str | Path | None = None, modality: str | None = None,
            device: str | torch.device | None = None,
            preprocess_override: Mapping[str, Any] | None = None,
            roi: str | Path | None = None, fast: bool = True,
            precision: str = "fp32", mask: str | Path | None = None,
            progress: bool = False) -> list[dict[str, Any]]:
    """Predict every case of ``input``; writes ``out_csv`` (unless None) and returns its rows.

    ``fast`` (default): the probabilities come from :mod:`medmap.fastpath` (fused window
    attention, inference mode; fp32, the same predictions as eager to ~1e-6, 2.7x faster on
    CPU at 128^3); ``fast=False`` (the CLI's ``--no-fast-path``) runs the plain eager model.
    ``precision="bf16"`` (the CLI's ``--precision bf16``, fast path only) runs the experts and
    conv streams in bf16 autocast: faster again, with small changes in the probabilities
    (``docs/benchmarks.md``); fp32 is the default.

    ``roi``: the organ-mask file of a single-volume or case-folder input, for models trained
    with ``preprocess.roi_mask`` (see the module doc). ``mask``: the lesion-mask file of such an
    input, for models that read the lesion mask (``MedMAPConfig.mask_key``; the ROI mask is
    used when the two keys are the same). ``progress``: a progress bar over the cases.

    Raises :class:`PredictInputError` (bad input: names the path and the fix),
    :class:`~medmap.data.manifest.ManifestError` (invalid manifest, every problem listed) or
    :class:`~medmap.data.io.VolumeReadError` (an unreadable volume, naming case and file).
    """
    from medmap.inference import load_classifier

    lm = load_classifier(model_dir, preprocess_override, device)
    organ = lm.doc.get("organ") or lm.model.cfg.organ or None
    return predict_with_model(lm.model, lm.preprocess, input, out_csv, organ=organ,
                              cam_dir=cam_dir, modality=modality, roi=roi, fast=fast,
                              precision=precision, mask=mask, progress=progress,
                              text_encoder=lm.text_encoder, name=str(model_dir))


def predict_with_model(model, preprocess, input: str | Path, out_csv: str | Path | None, *,
                       organ: str | None = None, cam_dir: str | Path | None = None,
                       modality: str | None = None, roi: str | Path | None = None,
                       fast: bool = True, precision: str = "fp32",
                       mask: str | Path | None = None, progress: bool = False,
                       text_encoder=None, name: str = "model") -> list[dict[str, Any]]:
    """:func:`predict` with a model already built: ``model`` (a
    :class:`~medmap.models.medmap.MedMAPClassifier` in eval mode) and ``preprocess`` (its
    :class:`~medmap.data.preprocess.PreprocessConfig`). The exported MONAI bundle's inference
    config calls this, so the bundle and ``medmap predict`` share every step.

    ``text_encoder``: a callable returning the frozen text encoder, needed only by
    ``csa_text: report`` models. Example::

        predict_with_model(net.eval(), PreprocessConfig(size=(32, 32, 32)), "case/", "p.csv")
    """
    import nibabel as nib

    from medmap.data.io import VolumeReadError
    from medmap.data.preprocess import Preprocessor
    from medmap.cam import gradcam
    from medmap.fastpath import fast_classifier
    from medmap.inference import report_inputs

    pcfg = preprocess
    cfg = model.cfg
    mods, classes = list(cfg.modalities), list(cfg.classes)
    organ = organ or cfg.organ or None
    lesion_key = cfg.mask_key if getattr(model, "needs_mask", False) else None
    cases = resolve_input(input, mods, organ, modality, pcfg.roi_mask, roi, lesion_key, mask)
    pre = Preprocessor(pcfg)
    dev = next(model.parameters()).device
    report_mode = getattr(cfg, "csa_text", "knowledge") == "report"
    if report_mode:      # report-assisted diagnosis: each case's reports guide its prediction
        if any(c.reports is None for c in cases):
            raise PredictInputError(
                f"{input}: this model (csa_text 'report') reads each case's per-sequence reports "
                "at inference; give a manifest whose cases carry reports")
        if cam_dir is not None:
            raise PredictInputError("--cam: Grad-CAM of a csa_text 'report' model is not "
                                    "supported; predict without --cam")
        if text_encoder is None:
            raise PredictInputError(f"{name}: a csa_text 'report' model needs its text encoder "
                                    "(predict from the model folder)")
        warnings.warn(f"{name}: csa_text 'report' -- the cases' own reports guide the "
                      "prediction; wherever a report states the diagnosis this leaks the label",
                      stacklevel=2)
        text_encoder = text_encoder()
        fast = False
    fast_model = fast_classifier(model, precision=precision) if fast else None
    rows: list[dict[str, Any]] = []
    cam_names: dict[str, str] = {}
    from tqdm.auto import tqdm

    for case in tqdm(cases, desc="predict", unit="case", disable=not progress):
        images = torch.zeros(1, len(mods), 1, *pcfg.size)
        present = torch.zeros(1, len(mods), dtype=torch.bool)
        for m, path in case.volumes.items():
            vol = _read_checked(case, m, path)
            try:
                images[0, mods.index(m)] = pre(vol, m, roi=case.roi)
            except VolumeReadError as e:
                raise VolumeReadError(f"case {case.case_id!r}, modality {m}: {e}") from None
            present[0, mods.index(m)] = True
        images, present = images.to(dev), present.to(dev)
        les = {}
        if lesion_key is not None:
            ref = next(iter(case.volumes.values()))
            try:
                les = {"lesion_mask": pre.preprocess_mask(case.lesion, reference=ref,
                                                          roi=case.roi)[None].to(dev)}
            except VolumeReadError as e:
                raise VolumeReadError(f"case {case.case_id!r}, mask {lesion_key}: {e}") from None
        if fast_model is not None:
            probs = fast_model(images, present, **les)["probs"][0].float().cpu().numpy()
        else:
            kw = report_inputs(text_encoder, [case.reports], mods, dev) if report_mode else {}
            with torch.no_grad():
                probs = model(images, present, **kw, **les)["probs"][0].float().cpu().numpy()
        used = [m for m in mods if m in case.volumes]
        missing = [m for m in mods if m not in case.volumes]
        rows.append(prediction_row(case.case_id, probs, classes, used, missing,
                                   label=case.label, source=case.source))
        if cam_dir is not None:
            cams = gradcam(model, images, present, class_index=int(probs.argmax()),
                           lesion_mask=les.get("lesion_mask"))
            folder = _cam_folder(Path(cam_dir), case.case_id, cam_names)
            folder.mkdir(parents=True, exist_ok=True)
            for m in used:
                native = pre.invert(cams[m][0], case.volumes[m], roi=case.roi)  # (1, X, Y, Z)
                arr = np.asarray(native[0].detach().cpu().numpy(), dtype=np.float32)
                aff = np.asarray(native.affine.detach().cpu().numpy(), dtype=np.float64)
                nib.save(nib.Nifti1Image(arr, aff), str(folder / f"{_safe(m)}_cam.nii.gz"))
    if out_csv is not None:
        write_rows_csv(rows, out_csv)
    return rows
