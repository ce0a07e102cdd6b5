"""Importer for the LLD-MMRI 2023 liver-lesion classification dataset (MICCAI 2023 challenge).

The release as downloaded (LMMMEng/LLD-MMRI2023, ``main/README.md``, "Data Preparation")::

    <release>/                              <- ``root``: the release folder, or
        images/MR-x/<studyUID>/<seriesUID>.nii.gz     (full volumes, see ``full_volumes``)
        labels/Annotation.json                        (boxes and categories of the full volumes)
        classification_dataset/             <- ``root`` may also be this folder
            images/
                MR-12345/
                    T2WI.nii.gz  DWI.nii.gz  In Phase.nii.gz  Out Phase.nii.gz
                    C-pre.nii.gz  C+A.nii.gz  C+V.nii.gz  C+Delay.nii.gz
                MR-12345_1/ ...             a second lesion of MR-12345 (crop_roi.py naming)
            labels/                         <- label files may also sit directly in the folder
                labels.txt                      official training labels
                labels_val_inaccessible.txt     official validation list (label -1 = unknown)
                labels_test_inaccessible.txt    official test list (label -1 = unknown)
                train_fold1.txt ... train_fold5.txt, val_fold1.txt ... val_fold5.txt
                (or labels_train.txt / labels_val.txt / labels_test.txt, or train.txt / ...)

The test-set archive (``lldmmri_test_set/``) has the same shape (``labels/Annotation_test.json``,
``classification_dataset/labels/labels_test_inaccessible.txt``) and is passed the same way. When
``root`` holds both ``images/`` and ``classification_dataset/``, the pre-cropped
``classification_dataset/`` is used and an :class:`LLDLayoutWarning` says so; ``full_volumes=True``
(``--full-volumes``) uses the whole volumes instead (see :mod:`medmap.data.sources.lld_full`):
one case per annotated lesion, with the 3D boxes written as lesion masks (``masks["lesion"]``
and one mask per phase, keyed by the phase).

Label files hold one ``case_id label`` line per case (whitespace, comma or tab separated;
blank lines and ``#`` comments skipped). ``label`` is ``0..6`` in the order of
:data:`medmap.data.vocab.LIVER` ``.classes`` (hemangioma, ICC, abscess, metastasis, cyst, FNH,
HCC); ``-1`` or a missing label means unlabelled (``Case.label = None``). The case id may be
written with or without the dash (``MR-12345`` or ``MR12345``); underscores count, so
``MR745_1`` (lesion 1 of ``MR745``) and ``MR7451`` are different cases. The manifest uses the
folder name found on disk.

Splits:

* ``fold=K``: ``train_foldK.txt`` -> ``train``, ``val_foldK.txt`` -> ``val``, and the test list
  (``labels_test.txt`` / ``test.txt`` / ``labels_test_inaccessible.txt``) -> ``test`` if present.
* ``fold=None``: the first file found of each of
  ``train``: ``labels_train.txt, train_labels.txt, train.txt, labels.txt``;
  ``val``: ``labels_val.txt, val_labels.txt, val.txt, labels_val_inaccessible.txt``;
  ``test``: ``labels_test.txt, test_labels.txt, test.txt, labels_test_inaccessible.txt``.
* ``labels_file``: a single ``case_id label`` file that supplies the labels. The split files
  above (if any) still decide each case's split; their own labels must agree with it (``-1``
  always defers to it). Without split files every case of ``labels_file`` goes to ``train``.
* full volumes without any label file: every annotated lesion goes to ``train`` with the
  ``Annotation.json`` category as label.

Phase file names map to canonical modality names through
:data:`~medmap.data.vocab.MODALITY_ALIASES` (``"In Phase" -> "InPhase"``, ``"Out Phase" ->
"OutPhase"``; matching ignores case, spaces and underscores). A case folder lacking a phase is
accepted: the case simply has fewer modalities, and one :class:`LLDMissingPhaseWarning` lists
every such case. Files other than ``*.nii``/``*.nii.gz`` are ignored; a NIfTI file whose name is
not a phase is an error. LLD-MMRI has no reports, so ``Case.reports`` is empty.

All volume paths in the returned manifest are **absolute**, so it can be saved anywhere
(``Manifest.save``) and loaded back unchanged; ``Manifest.root`` is the dataset folder.

Benign / malignant: the challenge groups its seven classes into four benign types (hepatic
hemangioma, hepatic abscess, hepatic cyst, focal nodular hyperplasia) and three malignant ones
(intrahepatic cholangiocarcinoma, hepatic metastasis, hepatocellular carcinoma); see
:data:`LLD_BENIGN_MALIGNANT`.

Example:
    >>> from medmap.data.sources.lld_mmri import import_lld_mmri
    >>> m = import_lld_mmri("data", fold=1)            # the release folder      # doctest: +SKIP
    >>> m.save("lld_fold1.jsonl")                                                 # doctest: +SKIP
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

from medmap.config import UserError
from medmap.data.manifest import Case, Manifest, ManifestError
from medmap.data.sources.lld_full import (
    LesionCase,
    annotation_files,
    read_annotations,
    write_lesion_masks,
)
from medmap.data.vocab import LIVER, MODALITY_ALIASES

__all__ = [
    "LLD_BENIGN_MALIGNANT",
    "LLDLayoutWarning",
    "LLDMissingPhaseWarning",
    "import_lld_mmri",
    "lld_phase_to_modality",
]

#: LLD-MMRI class name -> ``"benign"`` / ``"malignant"`` (grouping given by the challenge).
LLD_BENIGN_MALIGNANT: dict[str, str] = {
    "hepatic_hemangioma": "benign",
    "intrahepatic_cholangiocarcinoma": "malignant",
    "hepatic_abscess": "benign",
    "hepatic_metastasis": "malignant",
    "hepatic_cyst": "benign",
    "focal_nodular_hyperplasia": "benign",
    "hepatocellular_carcinoma": "malignant",
}

_SPLIT_CANDIDATES: dict[str, tuple[str, ...]] = {
    "train": ("labels_train.txt", "train_labels.txt", "train.txt", "labels.txt"),
    "val": ("labels_val.txt", "val_labels.txt", "val.txt", "labels_val_inaccessible.txt"),
    "test": ("labels_test.txt", "test_labels.txt", "test.txt", "labels_test_inaccessible.txt"),
}

_CLASS_HELP = ", ".join(f"{i}={c}" for i, c in enumerate(LIVER.classes))


class LLDMissingPhaseWarning(UserWarning):
    """Some LLD-MMRI case folders lack one or more of the eight phases."""


class LLDLayoutWarning(UserWarning):
    """Which folder of the release was read (e.g. ``classification_dataset/`` over ``images/``),
    or lesion boxes that could not become masks."""


def _norm_phase(name: str) -> str:
    return re.sub(r"[\s_]+", "", name).lower()


_PHASES: dict[str, str] = {_norm_phase(m): m for m in LIVER.modalities}
for _alias, _canon in MODALITY_ALIASES.items():
    if _canon in LIVER.modalities:
        _PHASES.setdefault(_norm_phase(_alias), _canon)


def lld_phase_to_modality(name: str) -> str | None:
    """Canonical liver modality of an LLD-MMRI phase name (``"In Phase"`` -> ``"InPhase"``), or
    None if the name is not a phase."""
    return _PHASES.get(_norm_phase(name))


def _case_key(case_id: str) -> str:
    """Dash/case-insensitive key: ``MR-12345``, ``mr12345`` and ``MR12345`` agree; underscores
    count (``MR745_1``, lesion 1 of ``MR745`` in crop_roi.py's naming, is not ``MR7451``)."""
    return re.sub(r"[-\s]", "", case_id).upper()


def _nifti_stem(p: Path) -> str | None:
    n = p.name
    low = n.lower()
    if low.endswith(".nii.gz"):
        return n[:-7]
    if low.endswith(".nii"):
        return n[:-4]
    return None


def _full_volume_layout(folder: Path) -> bool:
    """``images/MR-x/<study>/<series>.nii.gz`` (the release's whole volumes) rather than
    ``images/MR-x/<phase>.nii.gz``."""
    for case in sorted(folder.iterdir())[:5] if folder.is_dir() else []:
        if case.is_dir():
            kids = [k for k in case.iterdir() if not k.name.startswith(".")]
            if kids and all(k.is_dir() for k in kids):
                return True
    return False


def _base_folder(root: Path) -> Path:
    """The ``classification_dataset`` folder of ``root`` (the release root, the test archive's
    folder, or ``classification_dataset`` itself)."""
    if not root.exists():
        raise ManifestError(
            [f"LLD-MMRI root {root} does not exist; pass the release folder (holding "
             "classification_dataset/) or the 'classification_dataset' folder itself"], root)
    crop = root / "classification_dataset"
    if (crop / "images").is_dir():
        if (root / "images").is_dir():
            warnings.warn(
                f"LLD-MMRI {root}: holds both the full volumes (images/) and the pre-cropped "
                f"lesion ROIs; using {crop} (pass full_volumes=True / --full-volumes for the "
                "whole volumes with the lesion boxes as masks)", LLDLayoutWarning, stacklevel=3)
        return crop
    if (root / "images").is_dir():
        if _full_volume_layout(root / "images"):
            raise ManifestError(
                [f"{root / 'images'} holds full volumes (MR-x/<study>/<series>.nii.gz), not the "
                 "pre-cropped classification_dataset; pass full_volumes=True (--full-volumes) to "
                 "import them with the lesion boxes of labels/Annotation.json as masks, or pass "
                 "the classification_dataset folder"], root)
        return root
    raise ManifestError(
        [f"no images/ folder in {root} (nor in {crop}); pass the release folder or its "
         "'classification_dataset' folder, which holds images/MR-xxxxx/<phase>.nii.gz"], root)


def _release_folder(root: Path) -> Path:
    """The folder holding ``images/`` (full volumes) and ``labels/Annotation*.json``."""
    for cand in (root, root.parent):
        if (cand / "images").is_dir() and annotation_files(cand):
            return cand
    raise ManifestError(
        [f"full volumes: no images/ and labels/Annotation.json in {root}; pass the release "
         "folder (images/MR-x/<study>/<series>.nii.gz + labels/Annotation.json)"], root)


def _find_file(dirs: list[Path], name: str) -> Path | None:
    for base in dirs:
        for d in (base / "labels", base):
            if not d.is_dir():
                continue
            for p in d.iterdir():
                if p.is_file() and p.name.lower() == name.lower():
                    return p
    return None


def _read_label_file(path: Path, problems: list[str]) -> list[tuple[str, int | None, int]]:
    """``(case_id, label or None, line number)`` per line of a label file."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        problems.append(f"{path}: not UTF-8 text ({e}); save the label file as UTF-8")
        return []
    out: list[tuple[str, int | None, int]] = []
    for i, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = [t for t in re.split(r"[\s,;]+", line) if t]
        if len(parts) > 2:
            problems.append(f"{path} line {i}: expected 'case_id label', got {line!r}; write one "
                            "case id and one label per line")
            continue
        cid = parts[0]
        if len(parts) == 1:
            out.append((cid, None, i))
            continue
        try:
            lab = int(parts[1])
        except ValueError:
            lab = None
        if lab is None or not -1 <= lab < len(LIVER.classes):
            problems.append(
                f"{path} line {i}: case {cid!r} has label {parts[1]!r}, outside "
                f"0..{len(LIVER.classes) - 1}; fix the label ({_CLASS_HELP}; -1 = unlabelled)")
            continue
        out.append((cid, None if lab < 0 else lab, i))
    return out


def _scan_case(folder: Path, problems: list[str]) -> tuple[dict[str, str], int]:
    """Phase -> absolute path of one case folder, and the number of NIfTI files seen."""
    mods: dict[str, str] = {}
    seen = 0
    for p in sorted(folder.iterdir()):
        stem = _nifti_stem(p)
        if stem is None or p.name.startswith("."):
            continue
        seen += 1
        mod = lld_phase_to_modality(stem)
        if mod is None:
            problems.append(
                f"case {folder.name!r}: unknown phase file {p}; LLD-MMRI phases are "
                + ", ".join(f"'{m}.nii.gz'" for m in ("T2WI", "DWI", "In Phase", "Out Phase",
                                                       "C-pre", "C+A", "C+V", "C+Delay"))
                + "; rename or remove the file")
            continue
        if mod in mods:
            problems.append(f"case {folder.name!r}: phase {mod} given twice ({mods[mod]} and {p});"
                            " keep one file per phase")
            continue
        mods[mod] = str(p.resolve())
    return {m: mods[m] for m in LIVER.modalities if m in mods}, seen


def import_lld_mmri(
    root: str | Path,
    labels_file: str | Path | None = None,
    fold: int | str | None = None,
    *,
    full_volumes: bool = False,
    mask_dir: str | Path | None = None,
) -> Manifest:
    """Build a liver :class:`Manifest` from the LLD-MMRI release.

    Args:
        root: the release folder (holding ``images/``, ``labels/`` and
            ``classification_dataset/``), the test archive's folder, or the
            ``classification_dataset`` folder itself.
        labels_file: optional ``case_id label`` file supplying every label (see module doc).
        fold: cross-validation fold ``K`` (``1``, ``"1"`` or ``"fold1"``): use
            ``train_foldK.txt``/``val_foldK.txt`` (+ the test list if present) as the splits.
        full_volumes: build cases from the whole volumes (``images/`` + ``labels/Annotation.json``)
            instead of the pre-cropped ROIs, with the 3D lesion boxes written as masks.
        mask_dir: where the full-volume lesion masks are written (required with
            ``full_volumes``; one sub-folder per case).

    Returns:
        A manifest with ``organ="liver"``, labels as LIVER class names (None if unlabelled),
        absolute volume paths, no reports, and (full volumes) ``masks["lesion"]`` plus one mask
        per phase.

    Raises:
        ManifestError: listing every problem (missing label/fold file, label outside 0..6, case
            folder missing, unknown phase file, case listed in two splits, ...), each naming the
            file and case and saying how to fix it.
        ValueError: a bad ``fold``, or ``full_volumes`` without ``mask_dir``.

    Example:
        >>> m = import_lld_mmri("data", fold=1, full_volumes=True,
        ...                     mask_dir="lld_masks")                        # doctest: +SKIP
    """
    root = Path(root).expanduser()
    problems: list[str] = []
    lesions: dict[str, LesionCase] = {}
    if full_volumes:
        if mask_dir is None:
            raise UserError("full_volumes=True needs mask_dir=: the folder the lesion masks "
                            "(NIfTI, one per phase) are written to")
        base = _release_folder(root)
        crop = base / "classification_dataset"
        label_dirs = [crop, base] if crop.is_dir() else [base]
        lesions = read_annotations(base, problems, lld_phase_to_modality)
        available = {_case_key(cid): cid for cid in lesions}
        images = base / "images"
    else:
        base = _base_folder(root)
        label_dirs = [base]
        images = base / "images"
        folders: dict[str, Path] = {}
        for p in sorted(images.iterdir()):
            if p.is_dir() and not p.name.startswith("."):
                folders.setdefault(_case_key(p.name), p)
    labels_home = label_dirs[0] / "labels"

    # ---- which files define the splits ---------------------------------------------------
    split_files: list[tuple[str, Path]] = []
    if fold is not None:
        m = re.fullmatch(r"(?:fold)?\s*(\d+)", str(fold).strip(), flags=re.IGNORECASE)
        if m is None or int(m.group(1)) < 1:
            raise UserError(f"fold must be a positive integer such as 1 or 'fold1', got {fold!r}")
        k = int(m.group(1))
        for split, name in (("train", f"train_fold{k}.txt"), ("val", f"val_fold{k}.txt")):
            p = _find_file(label_dirs, name)
            if p is None:
                problems.append(
                    f"fold {k}: label file {labels_home / name} is missing; generate the folds "
                    "with the challenge's preprocess/gene_cross_val.py (--lab-path labels.txt "
                    f"--save-dir {labels_home}) or choose another fold")
            else:
                split_files.append((split, p))
        for name in _SPLIT_CANDIDATES["test"]:
            p = _find_file(label_dirs, name)
            if p is not None:
                split_files.append(("test", p))
                break
    else:
        for split, names in _SPLIT_CANDIDATES.items():
            for name in names:
                p = _find_file(label_dirs, name)
                if p is not None:
                    split_files.append((split, p))
                    break

    label_source: dict[str, tuple[int | None, str]] = {}  # key -> (label, where)
    if labels_file is not None:
        lf = Path(labels_file).expanduser()
        if not lf.exists() and not lf.is_absolute():  # also try relative to the dataset
            lf = next((c for d in label_dirs for c in (d / lf, d / "labels" / lf)
                       if c.exists()), lf)
        if not lf.is_file():
            raise ManifestError(
                [f"labels file {labels_file} does not exist; pass the path of a 'case_id label' "
                 f"file such as {labels_home / 'labels.txt'}"], lf)
        for cid, lab, i in _read_label_file(lf, problems):
            label_source[_case_key(cid)] = (lab, f"{lf} line {i}")
        if not split_files:
            split_files.append(("train", lf))

    entries: dict[str, tuple[str, str, int | None, str]] = {}  # key -> (id, split, label, where)
    layout_notes: list[str] = []
    if not split_files and not problems:
        if full_volumes and lesions:
            layout_notes.append(f"no label file in {', '.join(str(d) for d in label_dirs)}: all "
                                f"{len(lesions)} annotated lesions go to split 'train' with their "
                                "Annotation.json category")
            entries = {_case_key(c): (c, "train", lc.category, "Annotation.json")
                       for c, lc in lesions.items()}
        else:
            fold_files = sorted(p.name for b in label_dirs for d in (b / "labels", b)
                                if d.is_dir() for p in d.glob("train_fold*.txt"))
            hint = (f"; fold files exist ({', '.join(fold_files)}): pass fold=K (--fold K)"
                    if fold_files else "")
            looked = ", ".join(n for names in _SPLIT_CANDIDATES.values() for n in names)
            raise ManifestError(
                [f"no label file found in {labels_home} or {label_dirs[0]} (looked for {looked})"
                 f"{hint}; add the challenge's labels/ folder or pass labels_file="], base)

    # ---- read the split files ------------------------------------------------------------
    for split, path in split_files:
        for cid, lab, i in _read_label_file(path, problems):
            key = _case_key(cid)
            where = f"{path} line {i}"
            if key in entries:
                prev = entries[key]
                if prev[1] != split:
                    problems.append(f"case {cid!r}: listed in split {prev[1]!r} ({prev[3]}) and "
                                    f"in split {split!r} ({where}); keep it in one split only")
                else:
                    problems.append(f"case {cid!r}: listed twice ({prev[3]} and {where}); "
                                    "remove the duplicate line")
                continue
            if key in label_source:
                lab0, where0 = label_source[key]
                if lab is not None and lab0 is not None and lab != lab0:
                    problems.append(f"case {cid!r}: label {lab} in {where} disagrees with label "
                                    f"{lab0} in {where0}; correct one of the two files")
                lab = lab0 if lab0 is not None else lab
            entries[key] = (cid, split, lab, where)

    # ---- cases -----------------------------------------------------------------------------
    cases: list[Case] = []
    missing_phases: list[str] = []
    for key, (cid, split, lab, where) in entries.items():
        if full_volumes:
            lc = lesions.get(available.get(key, ""))
            if lc is None:
                problems.append(f"case {cid!r} ({where}): not in {base / 'labels'} "
                                "Annotation*.json; add its annotation or remove it from the "
                                "label file")
                continue
            mods = {m: str(lc.images[m]) for m in LIVER.modalities if m in lc.images}
            if not mods:
                problems.append(f"case {cid!r}: none of its volumes exist under "
                                f"{images / lc.patient}; extract the release's images/ folder")
                continue
            masks = write_lesion_masks(lc, Path(mask_dir).expanduser(), layout_notes)
            name, lab = lc.case_id, lab if lab is not None else lc.category
        else:
            folder = folders.get(key)
            if folder is None:
                problems.append(f"case {cid!r} ({where}): no case folder {images / cid}; add the "
                                "case's images or remove it from the label file")
                continue
            mods, seen = _scan_case(folder, problems)
            if not mods:
                if not seen:  # (unknown files were already reported)
                    problems.append(f"case {folder.name!r}: folder {folder} holds no phase "
                                    "volumes (<phase>.nii.gz); add them or remove the case from "
                                    + where)
                continue
            masks, name = {}, folder.name
        lacking = [m for m in LIVER.modalities if m not in mods]
        if lacking:
            missing_phases.append(f"{name} (no {', '.join(lacking)})")
        cases.append(Case(
            case_id=name,
            organ="liver",
            split=split,
            label=None if lab is None else LIVER.classes[lab],
            modalities=mods,
            masks=masks,
        ))
    if problems:
        raise ManifestError(problems, base)
    if not cases:
        raise ManifestError([f"the label files ({', '.join(str(p) for _, p in split_files)}) "
                             "list no cases; add 'case_id label' lines"], base)
    if missing_phases:
        warnings.warn(
            f"LLD-MMRI {base}: {len(missing_phases)} case(s) lack phases and keep fewer "
            f"modalities: {'; '.join(missing_phases)}",
            LLDMissingPhaseWarning, stacklevel=2)
    if layout_notes:
        warnings.warn(f"LLD-MMRI {base}: " + "; ".join(layout_notes), LLDLayoutWarning,
                      stacklevel=2)
    return Manifest(cases, base)
