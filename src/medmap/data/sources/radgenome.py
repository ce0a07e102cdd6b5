"""Importer for RadGenome-Brain MRI (AutoRG-Brain, Lei et al. 2024): brain MRI with reports.

RadGenome-Brain MRI (https://huggingface.co/datasets/JiayuLei/RadGenome-Brain_MRI) ships the
*reports* and the split; the *images* come from the public challenges they were written for
(BraTS 2023 GLI / MEN / MET, ISLES 2022, WMH 2017) and are used as each challenge's download
unpacks, with no renaming. The release (file and folder names matched case-insensitively)::

    RadGenome-Brain_MRI/                    <- ``root``
        train_val_test_split.json           split name -> ids (may also sit in each subset)
        BraTS_GLI/                          also BraTS_MEN/, BraTS_MET/, ISLES22/, WMH/
            global_finding.json             case id -> global finding text
            impression.json                 case id -> impression text (or {"impression": ...})
            modal_wise_finding.json         case id -> {modality -> finding text}, or
                                            "<case>-<modality>" -> finding text

The downloads, anywhere below the ``image_root`` folders (searched recursively, see
:mod:`medmap.data.sources.radgenome_images`) or below the subset folders themselves::

    ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData/BraTS-GLI-00012-000/
        BraTS-GLI-00012-000-{t1n,t1c,t2w,t2f,seg}.nii.gz          (MEN, MET likewise)
    ISLES-2022/[rawdata/]sub-strokecase0001/ses-0001/{anat,dwi}/sub-strokecase0001_ses-0001_
        {FLAIR,dwi,adc}.nii.gz + derivatives/sub-strokecase0001/ses-0001/..._msk.nii.gz
    <WMH>/{training,test}/<Site>/[<scanner>/]<id>/{orig,pre}/{FLAIR,T1,3DT1}.nii.gz + wmh.nii.gz
        (case ``<Site>_<id>``, e.g. ``Utrecht_0``; pre/ wins over orig/, 3DT1 is skipped)

``image_root`` is a folder, a list of folders, ``"SUBSET=PATH"`` strings or a
``{subset: folder(s)}`` mapping (a subset with its own folders searches only those; the others
search the plain folders). Case files may also lie flat as ``<case>-<modality>.nii.gz``.

Modality names map through :data:`~medmap.data.vocab.MODALITY_ALIASES` plus
:data:`RADGENOME_ALIASES` (``t1n->T1WI, t1c->T1C, t2w->T2WI, t2f->T2FLAIR, dwi->DWI,
adc->ADC, flair->T2FLAIR``; case, ``-``/``_``/spaces ignored). ``seg``/``msk``/``mask``/
``label``/``wmh`` files become ``masks["lesion"]``. ISLES 2022's FLAIR is skipped: RadGenome's
ISLES22 cases are DWI + ADC, and the lesion mask is drawn in DWI space. Any other NIfTI file
is reported as an error.

Reports: ``reports[<modality>]`` is the modal-wise finding of that sequence (kept only if the
case has that image: the validator rejects reports without a volume) and
``reports["global"]`` is ``global finding + " " + impression``.

Splits: the ids in ``train_val_test_split.json`` (case ids or image names such as
``BraTS-GLI-00012-000-t2f``; nested by subset or not; ``train``/``training``, ``val``/
``valid``/``validation``, ``test``/``testing``) decide ``Case.split``. Cases listed nowhere
are left out with a :class:`RadGenomeWarning`.

Missing images: a case without any image file is an error naming the folders searched; a
subset without any image at all is one error line. With ``skip_missing=True`` such cases are
left out and a :class:`RadGenomeWarning` says how many, per subset.

Benign / malignant label (the brain classification task), see :data:`RADGENOME_SUBSET_LABELS`:

=============  =====================================  ==============
subset         disease                                ``Case.label``
=============  =====================================  ==============
BraTS_MEN      meningioma (WHO grade 1 mostly)        ``"benign"``
BraTS_GLI      glioma (BraTS 2021 adult glioma)       ``"malignant"``
BraTS_MET      brain metastases                       ``"malignant"``
ISLES22        ischaemic stroke -- not a tumour       ``None``
WMH            white-matter hyperintensities          ``None``
=============  =====================================  ==============

ISLES22 and WMH cases are kept with ``label=None``: usable for image-report pre-training, left
out of the benign/malignant classification task (which only uses labelled cases).

All volume paths are **absolute**, so the manifest can be saved anywhere and loaded back;
``Manifest.root`` is ``root``. ``organ="brain"``.

Example:
    >>> from medmap.data.sources.radgenome import import_radgenome
    >>> m = import_radgenome("RadGenome-Brain_MRI", subsets=["BraTS_GLI", "WMH"],
    ...                      image_root=["/data/brats2023", "WMH=/data/wmh"])   # doctest: +SKIP
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path

from medmap.config import UserError
from medmap.data.manifest import Case, Manifest, ManifestError
from medmap.data.sources.radgenome_images import TreeIndex, file_kind, parse_image_roots
from medmap.data.sources.radgenome_text import (
    HF,
    RADGENOME_ALIASES,
    assign_splits,
    canonical_subset,
    radgenome_modality,
    read_reports,
    read_split_files,
)
from medmap.data.vocab import BRAIN

__all__ = [
    "RADGENOME_ALIASES",
    "RADGENOME_SUBSET_LABELS",
    "RADGENOME_SUBSETS",
    "RadGenomeWarning",
    "import_radgenome",
    "radgenome_modality",
]

RADGENOME_SUBSETS: tuple[str, ...] = ("BraTS_GLI", "BraTS_MEN", "BraTS_MET", "ISLES22", "WMH")

#: Subset -> brain class (``None``: not a tumour, excluded from benign/malignant classification).
RADGENOME_SUBSET_LABELS: dict[str, str | None] = {
    "BraTS_GLI": "malignant",
    "BraTS_MEN": "benign",
    "BraTS_MET": "malignant",
    "ISLES22": None,
    "WMH": None,
}

#: Modalities each subset normally has (a case lacking one gets a warning, not an error).
_EXPECTED: dict[str, tuple[str, ...]] = {
    "BraTS_GLI": ("T1WI", "T1C", "T2WI", "T2FLAIR"),
    "BraTS_MEN": ("T1WI", "T1C", "T2WI", "T2FLAIR"),
    "BraTS_MET": ("T1WI", "T1C", "T2WI", "T2FLAIR"),
    "ISLES22": ("DWI", "ADC"),
    "WMH": ("T1WI", "T2FLAIR"),
}

#: Challenge images that are not part of a RadGenome subset (skipped silently).
_SKIP: dict[str, tuple[str, ...]] = {"ISLES22": ("T2FLAIR",)}

_CHALLENGE: dict[str, str] = {
    "BraTS_GLI": "the BraTS 2023 adult-glioma (GLI) training data "
                 "(ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData)",
    "BraTS_MEN": "the BraTS 2023 meningioma (MEN) training data "
                 "(ASNR-MICCAI-BraTS2023-MEN-Challenge-TrainingData)",
    "BraTS_MET": "the BraTS 2023 metastases (MET) training data "
                 "(ASNR-MICCAI-BraTS2023-MET-Challenge-TrainingData)",
    "ISLES22": "the ISLES 2022 data (ISLES-2022/sub-strokecaseXXXX + derivatives/)",
    "WMH": "the WMH 2017 challenge data (<Site>/<id>/{orig,pre}/ + wmh.nii.gz)",
}


class RadGenomeWarning(UserWarning):
    """A RadGenome-Brain case lacks an expected modality, mask or split, a report has no image,
    or cases without images were skipped (``skip_missing``)."""


def _resolve_subsets(root: Path, subsets: Iterable[str] | None) -> list[tuple[str, Path]]:
    on_disk: dict[str, Path] = {}
    for p in sorted(root.iterdir()):
        s = canonical_subset(p.name) if p.is_dir() else None
        if s is not None:
            on_disk.setdefault(s, p)
    if subsets is None:
        if not on_disk:
            raise ManifestError(
                [f"no RadGenome subset folder in {root} (expected some of "
                 f"{', '.join(RADGENOME_SUBSETS)}); download {HF} into {root}"], root)
        return [(s, on_disk[s]) for s in RADGENOME_SUBSETS if s in on_disk]
    if isinstance(subsets, str):
        subsets = [subsets]
    out: list[tuple[str, Path]] = []
    problems: list[str] = []
    for name in subsets:
        s = canonical_subset(name)
        if s is None:
            raise UserError(f"unknown RadGenome subset {name!r}; use some of "
                            f"{', '.join(RADGENOME_SUBSETS)}")
        if s not in on_disk:
            problems.append(f"subset {s}: folder {root / s} is missing; download it from {HF} "
                            "or leave the subset out")
        elif s not in [o for o, _ in out]:
            out.append((s, on_disk[s]))
    if problems:
        raise ManifestError(problems, root)
    return out


def _looked_for(cid: str) -> str:
    nested = f" (or {cid.replace('_', '/')}/)" if "_" in cid else ""
    return f"a folder {cid}/{nested} or {cid}-*.nii.gz files"


def import_radgenome(
    root: str | Path,
    subsets: Iterable[str] | None = None,
    *,
    image_root: str | Path | Iterable[str | Path] | Mapping[str, str | Path | list] | None = None,
    skip_missing: bool = False,
) -> Manifest:
    """Build a brain :class:`Manifest` (images + modal-wise and global reports) from RadGenome.

    Args:
        root: the RadGenome-Brain_MRI folder (subset folders + ``train_val_test_split.json``).
        subsets: subset names to import (default: every subset folder present); spellings such
            as ``"BraTS-GLI"`` or ``"isles2022"`` are accepted.
        image_root: where the challenge downloads are unpacked, searched recursively for each
            case: a folder, a list of folders and/or ``"SUBSET=PATH"`` strings, or a
            ``{subset: folder(s)}`` mapping. The subset folders of ``root`` are searched too.
        skip_missing: leave out cases (and whole subsets) without images instead of failing;
            a :class:`RadGenomeWarning` says how many were skipped.

    Returns:
        A manifest with ``organ="brain"``, labels from :data:`RADGENOME_SUBSET_LABELS`,
        absolute paths, ``reports[modality]``, ``reports["global"]`` and ``masks["lesion"]``.

    Raises:
        ManifestError: listing every problem (missing JSON or split file, invalid JSON, case
            without images, unknown image file, case in two splits, duplicate case id, ...),
            each naming the file and case and saying how to fix it.
        ValueError: an unknown subset name.

    Example:
        >>> m = import_radgenome("RadGenome-Brain_MRI", image_root="/data/downloads",
        ...                      skip_missing=True)                      # doctest: +SKIP
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ManifestError([f"RadGenome root {root} does not exist; pass the folder downloaded "
                             f"from {HF}"], root)
    chosen = _resolve_subsets(root, subsets)
    generic, per = parse_image_roots(image_root)
    problems: list[str] = [f"image root {p} does not exist; pass the folder the challenge "
                           "download was unpacked into" for p in generic + sum(per.values(), [])
                           if not p.is_dir()]
    notes: list[str] = []
    skipped: dict[str, list[str]] = {}
    indexes: dict[Path, TreeIndex] = {}
    split_pairs = read_split_files(root, [f for _, f in chosen], problems)

    cases: list[Case] = []
    seen_ids: dict[str, str] = {}
    for subset, folder in chosen:
        rep = read_reports(subset, folder, problems)
        if rep is None:
            continue
        split_of = assign_splits(subset, rep.ids, split_pairs, problems)

        # ---- images -------------------------------------------------------------------------
        bases = [b for b in per.get(subset, generic) + [folder] if b.is_dir()]
        looked = ", ".join(str(b) for b in bases)
        for b in bases:
            if b not in indexes:  # each folder is walked once for all subsets
                indexes[b] = TreeIndex(b)
        finders = [indexes[b] for b in bases]
        no_split: list[str] = []
        no_images: list[str] = []
        sub_cases: list[Case] = []
        for cid in rep.ids.by_lower.values():
            if cid not in split_of:
                no_split.append(cid)
                continue
            files = next((f for f in (t.find(cid) for t in finders) if f), [])
            if not files:
                no_images.append(cid)
                continue
            mods: dict[str, str] = {}
            masks: dict[str, str] = {}
            for f in files:
                kind = file_kind(f, cid, _SKIP.get(subset, ()))
                if kind == "skip":
                    continue
                if kind is None:
                    problems.append(
                        f"case {cid!r} ({subset}): unknown image file {f}; name volumes "
                        f"<case>-<modality>.nii.gz with modality in "
                        f"{', '.join(sorted(RADGENOME_ALIASES))} (or seg for the mask), or "
                        "remove the file")
                    continue
                target = masks if kind == "mask" else mods
                key = "lesion" if kind == "mask" else kind
                if key in target:
                    problems.append(f"case {cid!r} ({subset}): two files for {key} "
                                    f"({target[key]} and {f}); keep one")
                    continue
                target[key] = str(f.resolve())
            if not mods:
                if masks:
                    problems.append(f"case {cid!r} ({subset}): only a mask ({masks['lesion']}) and "
                                    "no image volume; add the case's <case>-<modality>.nii.gz "
                                    "files")
                continue
            kept, dropped = rep.for_case(cid, mods)
            lacking = [m for m in _EXPECTED[subset] if m not in mods]
            what = ([f"no {', '.join(lacking)} image"] if lacking else []) \
                + ([f"report(s) for {', '.join(dropped)} dropped (no image)"] if dropped else []) \
                + ([] if masks else ["no lesion mask"])
            if what:
                notes.append(f"{cid} ({subset}): " + ", ".join(what))
            sub_cases.append(Case(
                case_id=cid, organ="brain", split=split_of[cid][0],
                label=RADGENOME_SUBSET_LABELS[subset],
                modalities={m: mods[m] for m in BRAIN.modalities if m in mods},
                reports=kept, masks=masks,
            ))
        if no_images and skip_missing:
            skipped[subset] = no_images
        elif no_images and len(no_images) == len(rep.ids.by_lower) - len(no_split):
            problems.append(
                f"subset {subset}: no images found for any of its {len(no_images)} cases "
                f"(searched {looked} recursively for e.g. {_looked_for(no_images[0])}); "
                f"download {_CHALLENGE[subset]} and pass its folder as --image-root "
                f"(image_root=) or --image-root {subset}=PATH, leave the subset out, or pass "
                "--skip-missing (skip_missing=True)")
        else:
            for cid in no_images:
                problems.append(
                    f"case {cid!r} ({subset}): no image files (searched {looked} recursively "
                    f"for {_looked_for(cid)}); add the case from {_CHALLENGE[subset]}, pass "
                    "its folder as --image-root (image_root=), or pass --skip-missing")
        if no_split:
            notes.append(f"{len(no_split)} {subset} case(s) are in no split and were left out: "
                         + ", ".join(no_split[:10]) + (" ..." if len(no_split) > 10 else ""))
        for c in sub_cases:
            if c.case_id in seen_ids:
                problems.append(f"case {c.case_id!r}: id used in subsets {seen_ids[c.case_id]} and "
                                f"{subset}; case ids must be unique, import the subsets separately")
                continue
            seen_ids[c.case_id] = subset
            cases.append(c)

    if problems:
        raise ManifestError(problems, root)
    if skipped:
        n = sum(len(v) for v in skipped.values())
        warnings.warn(
            f"RadGenome-Brain {root}: skipped {n} case(s) whose images were not found ("
            + ", ".join(f"{s}: {len(v)}" for s, v in skipped.items()) + "); first: "
            + ", ".join(f"{v[0]} ({s})" for s, v in skipped.items()), RadGenomeWarning,
            stacklevel=2)
    if not cases:
        raise ManifestError([f"no case with images and a split found under {root}; check the "
                             "subset folders, --image-root and train_val_test_split.json"], root)
    if notes:
        warnings.warn(f"RadGenome-Brain {root}: " + "; ".join(notes), RadGenomeWarning,
                      stacklevel=2)
    return Manifest(cases, root)
