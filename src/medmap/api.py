"""The Python API: open a model folder and use it from a notebook.

``medmap.load(path)`` opens any model folder (or the run folder around it) that medmap
writes and returns what the folder holds:

* a fine-tuned classifier (``medmap finetune``) -> :class:`Classifier`, with ``predict`` (one
  case, with per-sequence Grad-CAMs as nibabel images on the input's grid) and
  ``predict_many`` (a manifest or a list of cases, batched through the same code path);
* a pre-trained vision-language model (MedMAP's ``pretrain``, MG-3D) -> :class:`Pretrained`,
  with ``embed``, ``zeroshot`` and ``retrieve`` on a manifest.

The CLI runs the same functions (``medmap predict`` is :func:`medmap.predict.predict`), so both
give the same probabilities.

A case is a dict of sequence name -> volume, where a volume is a file path (NIfTI, NRRD, a
DICOM series folder), a ``nibabel`` image, or a ``(array, affine)`` pair; masks (the lesion
mask of models that read it, the organ ROI of models that crop to one) and reports go in the
same form under ``masks`` / ``reports``.

Example:
    >>> import medmap
    >>> model = medmap.load("medmap-demo/runs/liver/finetune")          # doctest: +SKIP
    >>> result = model.predict({"T2WI": "case/T2WI.nii.gz", "C+A": "case/C+A.nii.gz"},
    ...                        masks={"lesion": "case/lesion.nii.gz"})    # doctest: +SKIP
    >>> result.predicted, result.probabilities["hepatic_cyst"]          # doctest: +SKIP
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medmap.config import UserError

__all__ = ["load", "Classifier", "Pretrained", "Prediction"]

Volume = Any      # str | Path | nibabel image | (numpy array, 4x4 affine)


@dataclass
class Prediction:
    """One case's result: ``probabilities`` (class -> p), ``predicted`` (the argmax class),
    ``cams`` (sequence -> nibabel image on that input volume's grid; empty when not asked),
    ``text_guidance`` (what guided the model's Transformer stream, in words) and ``row`` (the
    CSV row ``medmap predict`` writes)."""

    case_id: str
    probabilities: dict[str, float]
    predicted: str
    text_guidance: str
    cams: dict[str, Any] = field(default_factory=dict)
    row: dict[str, Any] = field(default_factory=dict)


def _write_volume(v: Volume, path: Path, what: str) -> str:
    """A file path for ``v``: paths are used as they are, images and arrays are written."""
    import nibabel as nib
    import numpy as np

    if isinstance(v, (str, Path)):
        if not Path(v).exists():
            raise UserError(f"{what}: {v} does not exist")
        return str(Path(v).resolve())
    if isinstance(v, tuple) and len(v) == 2:
        arr, aff = np.asarray(v[0]), np.asarray(v[1], dtype=np.float64)
        if arr.ndim != 3 or aff.shape != (4, 4):
            raise UserError(f"{what}: give (array of 3 dimensions, 4x4 affine); got shapes "
                            f"{arr.shape} and {aff.shape}")
        v = nib.Nifti1Image(arr.astype(np.float32), aff)
    if not hasattr(v, "affine") or not hasattr(v, "get_fdata"):
        raise UserError(f"{what}: expected a file path, a nibabel image or (array, affine); "
                        f"got {type(v).__name__}")
    nib.save(v, str(path))
    return str(path)


def _case_line(case_id: str, organ: str | None, volumes: Mapping[str, Volume],
               masks: Mapping[str, Volume] | None, reports: Mapping[str, str] | None,
               folder: Path) -> dict[str, Any]:
    """One manifest line for an in-memory case, its volumes written under ``folder``."""
    if not volumes:
        raise UserError(f"case {case_id!r}: no volume; give a dict of sequence -> volume")
    folder.mkdir(parents=True, exist_ok=True)
    mods = {m: _write_volume(v, folder / f"vol{i}.nii.gz", f"case {case_id!r}, sequence {m}")
            for i, (m, v) in enumerate(volumes.items())}
    line: dict[str, Any] = {"case_id": case_id, "split": "test", "modalities": mods}
    if organ:
        line["organ"] = organ
    if masks:
        line["masks"] = {k: _write_volume(v, folder / f"mask{i}.nii.gz",
                                          f"case {case_id!r}, mask {k}")
                         for i, (k, v) in enumerate(masks.items())}
    if reports:
        line["reports"] = dict(reports)
    return line


class Classifier:
    """A fine-tuned MedMAP classifier (see the module doc); ``medmap.load`` builds it."""

    def __init__(self, path: Path, doc: dict[str, Any]):
        from medmap.inference import csa_description
        from medmap.models.medmap import MedMAPClassifier

        self.path = path
        raw = _Cfg({"csa_text": "knowledge", "language": "real", "pooling": "mean_max",
                    "mask_channel": False, "use_conv": True, "region_scales": [],
                    "mask_key": "lesion", **doc["config"]})
        self.classes: list[str] = list(raw.classes)
        self.modalities: list[str] = list(raw.modalities)
        self.organ: str | None = doc.get("organ") or getattr(raw, "organ", None) or None
        self.text_guidance: str = csa_description(raw)
        self.reads_mask: bool = MedMAPClassifier.reads_mask(raw)
        self.mask_key: str = raw.mask_key
        self.roi_mask: str | None = (doc.get("preprocess") or {}).get("roi_mask")

    def __repr__(self) -> str:
        return (f"Classifier({str(self.path)!r}, organ={self.organ!r}, "
                f"classes={len(self.classes)}, modalities={self.modalities})")

    def predict(self, case: Mapping[str, Volume], *, masks: Mapping[str, Volume] | None = None,
                reports: Mapping[str, str] | None = None, case_id: str = "case",
                cam: bool = True, **options: Any) -> Prediction:
        """Predict one case (sequence -> volume); ``cam`` adds per-sequence Grad-CAMs as
        nibabel images on the input's grid. ``options`` go to :func:`medmap.predict.predict`
        (``device``, ``fast``, ``precision``)."""
        return self._run([(case_id, case, masks, reports)], cam=cam, progress=False,
                         **options)[0]

    def predict_many(self, cases: str | Path | Iterable[Mapping[str, Any]], *,
                     cam: bool = False, progress: bool = True, **options: Any
                     ) -> list[Prediction]:
        """Predict a manifest (path) or a list of cases, each a dict with ``volumes`` (sequence
        -> volume) and optional ``case_id``, ``masks``, ``reports``."""
        if isinstance(cases, (str, Path)):
            return self._predict_manifest(Path(cases), cam=cam, progress=progress, **options)
        items = []
        for i, c in enumerate(cases):
            if "volumes" not in c:
                raise UserError(f"case {i}: give a dict with 'volumes' (sequence -> volume) "
                                "and optional 'case_id', 'masks', 'reports'")
            items.append((str(c.get("case_id", f"case{i}")), c["volumes"], c.get("masks"),
                          c.get("reports")))
        return self._run(items, cam=cam, progress=progress, **options)

    def _run(self, items: Sequence[tuple], cam: bool, progress: bool, **options: Any
             ) -> list[Prediction]:
        with tempfile.TemporaryDirectory(prefix="medmap-") as tmp:
            root = Path(tmp)
            lines = [_case_line(cid, self.organ, vols, masks, reps, root / f"c{i}")
                     for i, (cid, vols, masks, reps) in enumerate(items)]
            ids = [ln["case_id"] for ln in lines]
            if len(set(ids)) != len(ids):
                raise UserError("predict_many: case_id values must be unique")
            manifest = root / "cases.jsonl"
            manifest.write_text("".join(json.dumps(ln) + "\n" for ln in lines),
                                encoding="utf-8")
            return self._predict_manifest(manifest, cam=cam, progress=progress, **options)

    def _predict_manifest(self, manifest: Path, cam: bool, progress: bool, **options: Any
                          ) -> list[Prediction]:
        import nibabel as nib

        from medmap.predict import _cam_folder, _safe, predict

        with tempfile.TemporaryDirectory(prefix="medmap-cam-") as tmp:
            cam_dir = Path(tmp) if cam else None
            rows = predict(self.path, manifest, None, cam_dir=cam_dir, progress=progress,
                           **options)
            out, names = [], {}
            for row in rows:
                cams = {}
                if cam_dir is not None:
                    folder = _cam_folder(cam_dir, row["case_id"], names)
                    for m in filter(None, row["modalities_used"].split(";")):
                        img = nib.load(str(folder / f"{_safe(m)}_cam.nii.gz"))
                        cams[m] = nib.Nifti1Image(img.get_fdata(dtype="float32"), img.affine)
                probs = {c: float(row[f"prob_{c}"]) for c in self.classes}
                out.append(Prediction(row["case_id"], probs, row["predicted"],
                                      self.text_guidance, cams, row))
            return out


class _Cfg:
    """Attribute view of a config dict (for helpers that read ``cfg.x``)."""

    def __init__(self, d: Mapping[str, Any]):
        self.__dict__.update(d)


class Pretrained:
    """A pre-trained vision-language model (MedMAP's contrastive experts or MG-3D)."""

    def __init__(self, path: Path, doc: dict[str, Any]):
        self.path = path
        self.model_type: str = doc["model_type"]
        self.organ: str | None = doc.get("organ")

    def __repr__(self) -> str:
        return f"Pretrained({str(self.path)!r}, type={self.model_type!r}, organ={self.organ!r})"

    def zeroshot(self, manifest: str | Path, split: str | None = "test", **kw: Any
                 ) -> dict[str, Any]:
        """Report-free zero-shot classification (:func:`medmap.downstream.zeroshot.zeroshot`)."""
        from medmap.downstream.zeroshot import zeroshot

        return zeroshot(self.path, manifest, split=split, **kw)

    def retrieve(self, manifest: str | Path, split: str = "test", **kw: Any) -> dict[str, Any]:
        """Report-volume retrieval (:func:`medmap.downstream.retrieval.retrieval`)."""
        from medmap.downstream.retrieval import retrieval

        return retrieval(self.path, manifest, split=split, **kw)

    def embed(self, manifest: str | Path, out_dir: str | Path, split: str | None = None,
              **kw: Any) -> dict[str, Any]:
        """L2-normalised volume and report embeddings written to ``out_dir``
        (:func:`medmap.downstream.embed.export_embeddings`)."""
        from medmap.downstream.embed import export_embeddings

        return export_embeddings(self.path, manifest, out_dir, split=split, **kw)


def load(path: str | Path) -> Classifier | Pretrained:
    """Open a model folder (or a run folder holding ``model/``): a fine-tuned classifier
    gives a :class:`Classifier`, a pre-trained model a :class:`Pretrained`.

    Example:
        >>> import medmap
        >>> model = medmap.load("medmap-demo/runs/brain/finetune")   # doctest: +SKIP
        >>> model.classes                                             # doctest: +SKIP
        ['benign', 'malignant']
    """
    from medmap.inference import resolve_model_dir
    from medmap.models.hub import load_pretrained_config

    folder = resolve_model_dir(path)
    doc = load_pretrained_config(folder)
    kind = doc.get("model_type")
    if kind == "medmap_classifier":
        return Classifier(folder, doc)
    if kind in ("medmap_clip", "mg3d"):
        return Pretrained(folder, doc)
    raise UserError(f"{path}: a {kind!r} model folder; medmap.load opens classifiers "
                    "(medmap_classifier) and pre-trained models (medmap_clip, mg3d)")
