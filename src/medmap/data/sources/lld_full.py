"""LLD-MMRI full volumes: cases from ``images/`` + ``labels/Annotation.json``, with the
annotated 3D lesion boxes written as lesion masks.

The release folder (LMMMEng/LLD-MMRI2023, ``main/README.md``, "Data Preparation")::

    <release>/
        images/MR-x/<studyUID>/<seriesUID>.nii.gz      eight whole phase volumes per patient
        labels/Annotation.json                         (the test archive: Annotation_test.json)
        classification_dataset/{images,labels}/        the pre-cropped lesion ROIs + label files

``Annotation.json`` holds ``{"Annotation_info": {patient: [item, ...]}}``, one item per phase::

    {"phase": "C+A", "studyUID": "...", "seriesUID": "...",
     "annotation": {"num_targets": 1,
                    "lesion": {"0": {"category": 6,
                                     "bbox": {"3D_box": {"x_min": .., "y_min": .., "z_min": ..,
                                                         "x_max": .., "y_max": .., "z_max": ..}}}}}}

Lesion ``k > 0`` of a patient becomes case ``<patient>_<k>``, the name the challenge's
``preprocess/crop_roi.py`` gives its crop, so the label and fold files of
``classification_dataset/labels`` apply unchanged. The box indexes the volume as SimpleITK reads
it (``array[z, y, x]``, i.e. NIfTI voxel ``(x, y, z)``); the mask covers what ``crop_roi.py``
crops without its margin: ``x_min <= x < x_max``, ``y_min <= y < y_max``,
``z_min <= z <= z_max``.

Example:
    >>> from medmap.data.sources.lld_mmri import import_lld_mmri
    >>> m = import_lld_mmri("LLD-MMRI", fold=1, full_volumes=True,
    ...                     mask_dir="lld_masks")                       # doctest: +SKIP
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medmap.data.vocab import LIVER

__all__ = ["LesionCase", "annotation_files", "read_annotations", "write_lesion_masks"]

# the phase whose grid carries masks["lesion"]: arterial first, then the others in LIVER order
_REFERENCE = ("C+A",) + tuple(m for m in LIVER.modalities if m != "C+A")
_BOX_KEYS = ("x_min", "y_min", "z_min", "x_max", "y_max", "z_max")


@dataclass
class LesionCase:
    """One lesion of one patient: its volumes and, per phase, the 3D box (or None)."""

    case_id: str
    patient: str
    category: int | None
    images: dict[str, Path] = field(default_factory=dict)
    boxes: dict[str, dict[str, int] | None] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)   # phases whose file is absent


def _norm(s: str) -> str:
    return re.sub(r"[^a-z0-9]", "", s.lower())


def _category(v: Any, names: dict[str, int]) -> int | None | str:
    """Class index, None (-1 / inaccessible), or an error text."""
    if isinstance(v, bool):
        return f"category {v!r} is not a class"
    if isinstance(v, (int, float)) or (isinstance(v, str) and re.fullmatch(r"-?\d+", v.strip())):
        i = int(v)
        return None if i < 0 else i if i < len(LIVER.classes) else f"category {v!r} outside 0..6"
    if isinstance(v, str):
        key = _norm(v)
        if key in names:
            return _category(names[key], {})
        if key in ("inaccessible", "unknown", ""):
            return None
        for i, c in enumerate(LIVER.classes):
            if _norm(c) == key:
                return i
    return f"category {v!r} is not an LLD-MMRI class"


def annotation_files(release: Path) -> list[Path]:
    """``labels/Annotation*.json`` of a release folder (test archive: ``Annotation_test.json``)."""
    labels = release / "labels"
    if not labels.is_dir():
        return []
    return sorted(p for p in labels.iterdir() if p.is_file()
                  and re.fullmatch(r"annotation.*\.json", p.name.lower()))


def read_annotations(release: Path, problems: list[str],
                     phase_of: Any) -> dict[str, LesionCase]:
    """Lesion cases of every ``Annotation*.json`` of ``release/labels``, keyed by case id.

    ``phase_of`` maps an LLD phase name to the canonical modality (or None).
    """
    files = annotation_files(release)
    if not files:
        problems.append(f"full volumes: no {release / 'labels' / 'Annotation.json'}; pass the "
                        "release folder that holds images/ and labels/Annotation.json")
        return {}
    out: dict[str, LesionCase] = {}
    for path in files:
        try:
            obj = json.loads(path.read_text(encoding="utf-8-sig"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            problems.append(f"{path}: not valid JSON ({e}); re-extract the file from the release")
            continue
        info = obj.get("Annotation_info", obj) if isinstance(obj, dict) else None
        if not isinstance(info, dict):
            problems.append(f"{path}: expected {{'Annotation_info': {{patient: [phase items]}}}}; "
                            "re-extract the file from the release")
            continue
        cat_info = obj.get("Category_info") if isinstance(obj, dict) else None
        names = ({_norm(str(k)): v for k, v in cat_info.items()
                  if isinstance(v, (int, str))} if isinstance(cat_info, dict) else {})
        for patient, items in info.items():
            _read_patient(release, path, str(patient), items, names, phase_of, out, problems)
    return out


def _read_patient(release: Path, path: Path, patient: str, items: Any, names: dict[str, int],
                  phase_of: Any, out: dict[str, LesionCase], problems: list[str]) -> None:
    where = f"{path}: patient {patient!r}"
    if not isinstance(items, list):
        problems.append(f"{where}: expected a list of phase items; re-extract the file")
        return
    for n, item in enumerate(items):
        if not isinstance(item, dict) or not all(k in item for k in
                                                 ("phase", "studyUID", "seriesUID")):
            problems.append(f"{where} item {n}: needs 'phase', 'studyUID' and 'seriesUID'; "
                            "re-extract the file")
            continue
        mod = phase_of(str(item["phase"]))
        if mod is None:
            problems.append(f"{where} item {n}: unknown phase {item['phase']!r}; LLD-MMRI phases "
                            "are T2WI, DWI, In Phase, Out Phase, C-pre, C+A, C+V, C+Delay")
            continue
        base = release / "images" / patient / str(item["studyUID"]) / str(item["seriesUID"])
        image = next((c for c in (Path(f"{base}.nii.gz"), Path(f"{base}.nii")) if c.is_file()),
                     None)
        ann = item.get("annotation") or {}
        lesions = ann.get("lesion") if isinstance(ann, dict) else None
        if not isinstance(lesions, dict) or not lesions:
            problems.append(f"{where} phase {item['phase']!r}: no annotation.lesion boxes; "
                            "re-extract the file")
            continue
        for idx, les in lesions.items():
            cid = patient if str(idx) in ("0", "") else f"{patient}_{idx}"
            lc = out.setdefault(cid, LesionCase(cid, patient, None))
            cat = _category(les.get("category") if isinstance(les, dict) else None, names)
            if isinstance(cat, str):
                problems.append(f"{where} lesion {idx}: {cat}; fix Annotation.json")
                continue
            if cat is not None:
                lc.category = cat
            if mod in lc.images or mod in lc.missing:
                problems.append(f"{where}: phase {mod} listed twice; keep one item per phase")
                continue
            if image is None:
                lc.missing.append(mod)
                continue
            lc.images[mod] = image.resolve()
            box = ((les.get("bbox") or {}).get("3D_box") if isinstance(les, dict) else None)
            try:
                lc.boxes[mod] = {k: int(float(box[k])) for k in _BOX_KEYS}
            except (TypeError, KeyError, ValueError):
                lc.boxes[mod] = None


def write_lesion_masks(case: LesionCase, mask_dir: Path, notes: list[str]) -> dict[str, str]:
    """Write one uint8 mask per phase (the box, in that phase's voxel grid) under
    ``mask_dir/<case id>/``; returns ``masks`` for the manifest: each phase's mask keyed by the
    modality, and ``"lesion"`` = the mask of the reference phase (C+A, else the first phase in
    :data:`LIVER` order that has a box)."""
    import nibabel as nib

    out: dict[str, str] = {}
    bad: list[str] = []
    for mod in LIVER.modalities:
        box, image = case.boxes.get(mod), case.images.get(mod)
        if image is None:
            continue
        if box is None:
            bad.append(f"{mod}: no 3D_box")
            continue
        img = nib.load(str(image))
        shape = tuple(int(s) for s in img.shape[:3])
        lo = [max(box["x_min"], 0), max(box["y_min"], 0), max(box["z_min"], 0)]
        hi = [min(box["x_max"], shape[0]), min(box["y_max"], shape[1]),
              min(box["z_max"] + 1, shape[2])]
        if any(h <= a for a, h in zip(lo, hi)):
            bad.append(f"{mod}: box x {box['x_min']}..{box['x_max']}, y {box['y_min']}.."
                       f"{box['y_max']}, z {box['z_min']}..{box['z_max']} outside the "
                       f"{shape} volume")
            continue
        mask = np.zeros(shape, np.uint8)
        mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = 1
        hdr = img.header.copy()
        hdr.set_data_dtype(np.uint8)
        folder = mask_dir / case.case_id
        folder.mkdir(parents=True, exist_ok=True)
        dst = folder / f"{mod}_lesion.nii.gz"
        m = nib.Nifti1Image(mask, img.affine, header=hdr)
        m.header.set_slope_inter(1.0, 0.0)
        nib.save(m, str(dst))
        out[mod] = str(dst.resolve())
    if bad:
        notes.append(f"{case.case_id}: no lesion mask for " + "; ".join(bad))
    ref = next((m for m in _REFERENCE if m in out), None)
    if ref is not None:
        out = {"lesion": out[ref], **out}
    return out
