"""Importer for RadGenome-Brain MRI (AutoRG-Brain, Lei et al. 2024): brain MRI with reports.

RadGenome-Brain MRI (https://huggingface.co/datasets/JiayuLei/RadGenome-Brain_MRI) ships the
*reports* and the split; the *images* come from the public challenges they were written for
(BraTS 2023 GLI / MEN / MET, ISLES 2022, WMH 2017) and must be downloaded from each challenge.
Expected layout (file and folder names are matched case-insensitively)::

    root/
        train_val_test_split.json           split name -> ids (may also sit in each subset)
        BraTS_GLI/                          also BraTS_MEN/, BraTS_MET/, ISLES22/, WMH/
            global_finding.json             case id -> global finding text
            impression.json                 case id -> impression text (or {"impression": ...})
            modal_wise_finding.json         case id -> {modality -> finding text}, or
                                            "<case>-<modality>" -> finding text
            train_val_test_split.json       (optional, per subset)
            BraTS-GLI-00012-000/            the challenge's case folders (or under images/)
                BraTS-GLI-00012-000-t1n.nii.gz  -t1c  -t2w  -t2f  [-seg]
        ISLES22/sub-strokecase0001/...      <case>_dwi, _adc, [_FLAIR], [_msk] (nested folders ok)
        WMH/<case>/                         T1.nii.gz, FLAIR.nii.gz [wmh.nii.gz] (or <case>_T1 ...);
                                            the challenge's pre/ files win over orig/, 3DT1 skipped

Images may also live elsewhere: ``image_root`` is a folder holding the subset folders (or the
case folders directly), or a ``{subset: folder}`` mapping. Case files may also lie flat in
the subset folder as ``<case>-<modality>.nii.gz``.

Modality names map through :data:`~medmap.data.vocab.MODALITY_ALIASES` plus
:data:`RADGENOME_ALIASES` (``t1n->T1WI, t1c->T1C, t2w->T2WI, t2f->T2FLAIR, dwi->DWI,
adc->ADC, flair->T2FLAIR``; case, ``-``/``_``/spaces ignored). ``seg``/``msk``/``mask``/
``label``/``wmh`` files become ``masks["lesion"]``. Any other NIfTI file is reported as an error.

Reports: ``reports[<modality>]`` is the modal-wise finding of that sequence (kept only if the
case has that image: the validator rejects reports without a volume) and
``reports["global"]`` is ``global finding + " " + impression``.

Splits: the ids in ``train_val_test_split.json`` (case ids or image names such as
``BraTS-GLI-00012-000-t2f``; nested by subset or not; ``train``/``training``, ``val``/
``valid``/``validation``, ``test``/``testing``) decide ``Case.split``. Cases listed nowhere
are left out with a :class:`RadGenomeWarning`.

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
    >>> m = import_radgenome("RadGenome-Brain_MRI",
    ...                      subsets=["BraTS_GLI", "BraTS_MEN"])        # doctest: +SKIP
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from medmap.data.manifest import Case, Manifest, ManifestError
from medmap.data.vocab import BRAIN, GLOBAL_REPORT, MODALITY_ALIASES

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

_CHALLENGE: dict[str, str] = {
    "BraTS_GLI": "the BraTS 2023 adult-glioma (GLI) training data",
    "BraTS_MEN": "the BraTS 2023 meningioma (MEN) training data",
    "BraTS_MET": "the BraTS 2023 metastases (MET) training data",
    "ISLES22": "the ISLES 2022 data (rawdata/sub-strokecaseXXXX)",
    "WMH": "the WMH 2017 challenge data",
}

#: RadGenome / challenge spellings -> canonical brain modality (beyond MODALITY_ALIASES).
RADGENOME_ALIASES: dict[str, str] = {
    "t1n": "T1WI",
    "t1c": "T1C",
    "t2w": "T2WI",
    "t2f": "T2FLAIR",
    "dwi": "DWI",
    "adc": "ADC",
    "flair": "T2FLAIR",
    "t1": "T1WI",
    "t1wi": "T1WI",
    "t1ce": "T1C",
    "t1gd": "T1C",
    "t1contrast": "T1C",
    "t2": "T2WI",
    "t2wi": "T2WI",
    "t2flair": "T2FLAIR",
}

_MASK_TOKENS = {"seg", "mask", "msk", "label", "labels", "wmh", "lesion", "roi"}
# Volumes that are neither a modality of the manifest nor a mask: skipped silently (WMH's 3D T1
# duplicates its T1, which is used instead).
_SKIPPED = {"3dt1"}

_SUBSET_ALIASES: dict[str, str] = {
    "bratsgli": "BraTS_GLI", "gli": "BraTS_GLI", "glioma": "BraTS_GLI", "brats2021": "BraTS_GLI",
    "bratsmen": "BraTS_MEN", "men": "BraTS_MEN", "meningioma": "BraTS_MEN",
    "bratsmet": "BraTS_MET", "met": "BraTS_MET", "metastasis": "BraTS_MET",
    "metastases": "BraTS_MET",
    "isles22": "ISLES22", "isles2022": "ISLES22", "isles": "ISLES22",
    "wmh": "WMH", "wmh2017": "WMH",
}

_SPLIT_NAMES: dict[str, str] = {
    "train": "train", "training": "train", "tr": "train",
    "val": "val", "valid": "val", "validation": "val", "dev": "val",
    "test": "test", "testing": "test", "ts": "test",
}

_JSON_NAMES: dict[str, tuple[str, ...]] = {
    "global": ("globalfinding", "globalfindings"),
    "impression": ("impression", "impressions"),
    "modal": ("modalwisefinding", "modalwisefindings", "modalitywisefinding",
              "modalitywisefindings"),
    "split": ("trainvaltestsplit",),
}

_HF = "https://huggingface.co/datasets/JiayuLei/RadGenome-Brain_MRI"


class RadGenomeWarning(UserWarning):
    """A RadGenome-Brain case lacks an expected modality or split, or a report has no image."""


def _norm(s: str) -> str:
    return re.sub(r"[^a-z0-9]", "", s.lower())


_MODALITIES: dict[str, str] = {_norm(m): m for m in BRAIN.modalities}
for _a, _c in list(MODALITY_ALIASES.items()) + list(RADGENOME_ALIASES.items()):
    if _c in BRAIN.modalities:
        _MODALITIES.setdefault(_norm(_a), _c)


def radgenome_modality(name: str) -> str | None:
    """Canonical brain modality of a RadGenome / challenge name (``"t2f"`` -> ``"T2FLAIR"``)."""
    return _MODALITIES.get(_norm(name))


def _canonical_subset(name: str) -> str | None:
    return _SUBSET_ALIASES.get(_norm(name))


def _stem(name: str) -> str:
    low = name.lower()
    for ext in (".nii.gz", ".nii", ".json", ".txt"):
        if low.endswith(ext):
            return name[: -len(ext)]
    return name


def _prefixes(name: str) -> list[tuple[str, str]]:
    """``(prefix, rest)`` for every cut of ``name`` at a ``-``/``_``, longest prefix first."""
    return [(name[: m.start()], name[m.end():]) for m in reversed(list(re.finditer(r"[-_]", name)))]


def _token_kind(rest: str) -> str | None:
    """Modality name, ``"mask"``, or None for the part of a name after the case id."""
    for cand in (rest, re.split(r"[-_]", rest)[-1] if rest else ""):
        if not cand:
            continue
        mod = radgenome_modality(cand)
        if mod is not None:
            return mod
        if _norm(cand) in _MASK_TOKENS:
            return "mask"
    return None


def _text(v: Any) -> str:
    """Report text from a string, a list of strings, or a dict holding one."""
    if v is None:
        return ""
    if isinstance(v, str):
        return v.strip()
    if isinstance(v, (list, tuple)):
        return " ".join(t for t in (_text(x) for x in v) if t)
    if isinstance(v, dict):
        for k, x in v.items():
            if _norm(str(k)) in ("impression", "impressions", "globalfinding", "finding",
                                 "findings", "report", "text"):
                return _text(x)
        return " ".join(t for t in (_text(x) for x in v.values() if isinstance(x, str)) if t)
    return str(v).strip()


def _find_json(folder: Path, kind: str) -> Path | None:
    names = _JSON_NAMES[kind]
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.name.lower().endswith(".json") and _norm(_stem(p.name)) in names:
            return p
    return None


def _load_json(path: Path, problems: list[str]) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as e:
        problems.append(f"{path}: invalid JSON ({e.msg} at line {e.lineno} column {e.colno}); "
                        f"re-download the file from {_HF}")
    except UnicodeDecodeError as e:
        problems.append(f"{path}: not UTF-8 text ({e}); re-download the file from {_HF}")
    return None


class _Ids:
    """Case ids of one subset, matched case-insensitively, by exact id or by an id prefix."""

    def __init__(self) -> None:
        self.by_lower: dict[str, str] = {}

    def add(self, cid: str) -> str:
        return self.by_lower.setdefault(cid.lower(), cid)

    def get(self, cid: str) -> str | None:
        return self.by_lower.get(cid.lower())

    def match(self, name: str) -> tuple[str, str] | None:
        """``(case id, rest)`` when ``name`` is a case id or ``<case id>[-_]<rest>``."""
        hit = self.get(name)
        if hit is not None:
            return hit, ""
        for prefix, rest in _prefixes(name):
            hit = self.get(prefix)
            if hit is not None:
                return hit, rest
        return None


def _split_entries(obj: Any, out: list[tuple[str, str]], split: str | None = None) -> None:
    """Collect ``(split, id)`` pairs from any nesting of split names, subsets and lists."""
    if isinstance(obj, str):
        if split is not None:
            out.append((split, obj))
    elif isinstance(obj, (list, tuple)):
        for x in obj:
            _split_entries(x, out, split)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            ks = _SPLIT_NAMES.get(_norm(str(k)))
            if ks is not None:
                _split_entries(v, out, ks)
            elif isinstance(v, str) and _SPLIT_NAMES.get(_norm(v)) and split is None:
                out.append((_SPLIT_NAMES[_norm(v)], str(k)))  # {"case": "train"} form
            else:
                _split_entries(v, out, split)


def _image_bases(subset: str, folder: Path, image_root: Any) -> list[Path]:
    bases = [folder, folder / "images"]
    if isinstance(image_root, Mapping):
        for k, v in image_root.items():
            if _canonical_subset(str(k)) == subset:
                bases.insert(0, Path(v).expanduser())
    elif image_root is not None:
        ir = Path(image_root).expanduser()
        if ir.is_dir():
            bases += [p for p in sorted(ir.iterdir())
                      if p.is_dir() and _canonical_subset(p.name) == subset]
        bases.append(ir)
    return [b for b in bases if b.is_dir()]


class _ImageFinder:
    def __init__(self, bases: list[Path]):
        self.bases = bases
        self.dirs: list[dict[str, Path]] = []
        self.files: list[list[Path]] = []
        for b in bases:
            ents = sorted(b.iterdir())
            self.dirs.append({p.name.lower(): p for p in ents if p.is_dir()})
            self.files.append([p for p in ents if p.is_file() and _is_nifti(p)])

    def find(self, cid: str) -> list[Path]:
        """NIfTI files of case ``cid``: its folder (searched recursively; a folder named by a
        prefix of the id, e.g. ``sub-strokecase0001`` for ``sub-strokecase0001_ses-0001``, also
        counts), else ``<cid>[-_]*.nii.gz`` files lying flat in a base folder."""
        low = cid.lower()
        for name in [cid] + [pre for pre, _ in _prefixes(cid)]:
            for dirs in self.dirs:
                d = dirs.get(name.lower())
                if d is None:
                    continue
                files = [p for p in d.rglob("*") if p.is_file() and _is_nifti(p)
                         and not any(q.startswith(".") for q in p.relative_to(d).parts)]
                if name != cid:
                    files = [p for p in files if _stem(p.name).lower().startswith(low)]
                parts = {p: {q.lower() for q in p.relative_to(d).parts[:-1]} for p in files}
                if any("pre" in v for v in parts.values()):  # WMH: pre/ (preprocessed) over orig/
                    files = [p for p in files if "orig" not in parts[p]]
                if files:
                    return sorted(files)
        for files in self.files:
            hits = [p for p in files if _stem(p.name).lower().startswith(low)
                    and re.match(r"[-_]", _stem(p.name)[len(cid):] or "")]
            if hits:
                return hits
        return []


def _is_nifti(p: Path) -> bool:
    return p.name.lower().endswith((".nii", ".nii.gz")) and not p.name.startswith(".")


def _file_kind(p: Path, cid: str) -> str | None:
    stem = _stem(p.name)
    rest = stem[len(cid):].lstrip("-_") if stem.lower().startswith(cid.lower()) else stem
    if _norm(rest) in _SKIPPED or _norm(re.split(r"[-_]", rest)[-1]) in _SKIPPED:
        return "skip"
    return _token_kind(rest) if rest else None


def _resolve_subsets(root: Path, subsets: Iterable[str] | None) -> list[tuple[str, Path]]:
    on_disk: dict[str, Path] = {}
    for p in sorted(root.iterdir()):
        s = _canonical_subset(p.name) if p.is_dir() else None
        if s is not None:
            on_disk.setdefault(s, p)
    if subsets is None:
        if not on_disk:
            raise ManifestError(
                [f"no RadGenome subset folder in {root} (expected some of "
                 f"{', '.join(RADGENOME_SUBSETS)}); download {_HF} into {root}"], root)
        return [(s, on_disk[s]) for s in RADGENOME_SUBSETS if s in on_disk]
    if isinstance(subsets, str):
        subsets = [subsets]
    out: list[tuple[str, Path]] = []
    problems: list[str] = []
    for name in subsets:
        s = _canonical_subset(name)
        if s is None:
            raise ValueError(f"unknown RadGenome subset {name!r}; use some of "
                             f"{', '.join(RADGENOME_SUBSETS)}")
        if s not in on_disk:
            problems.append(f"subset {s}: folder {root / s} is missing; download it from {_HF} "
                            "or leave the subset out")
        elif s not in [o for o, _ in out]:
            out.append((s, on_disk[s]))
    if problems:
        raise ManifestError(problems, root)
    return out


def import_radgenome(
    root: str | Path,
    subsets: Iterable[str] | None = None,
    *,
    image_root: str | Path | Mapping[str, str | Path] | None = None,
) -> Manifest:
    """Build a brain :class:`Manifest` (images + modal-wise and global reports) from RadGenome.

    Args:
        root: the RadGenome-Brain_MRI folder (subset folders + ``train_val_test_split.json``).
        subsets: subset names to import (default: every subset folder present); spellings such
            as ``"BraTS-GLI"`` or ``"isles2022"`` are accepted.
        image_root: where the challenge images are, if not inside the subset folders: a folder
            holding subset folders or case folders, or a ``{subset: folder}`` mapping.

    Returns:
        A manifest with ``organ="brain"``, labels from :data:`RADGENOME_SUBSET_LABELS`,
        absolute paths, ``reports[modality]`` and ``reports["global"]``.

    Raises:
        ManifestError: listing every problem (missing JSON or split file, invalid JSON, case
            without images, unknown image file, case in two splits, duplicate case id, ...),
            each naming the file and case and saying how to fix it.
        ValueError: an unknown subset name.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ManifestError([f"RadGenome root {root} does not exist; pass the folder downloaded "
                             f"from {_HF}"], root)
    chosen = _resolve_subsets(root, subsets)
    problems: list[str] = []
    notes: list[str] = []

    # ---- split files (root level and per subset) ------------------------------------------
    split_pairs: list[tuple[str, str, Path]] = []
    split_files = [p for p in [_find_json(root, "split")] + [_find_json(f, "split")
                                                            for _, f in chosen] if p is not None]
    if not split_files:
        problems.append(f"split file {root / 'train_val_test_split.json'} is missing (nor in any "
                        f"subset folder); download it from {_HF}")
    for sf in split_files:
        obj = _load_json(sf, problems)
        if obj is None:
            continue
        pairs: list[tuple[str, str]] = []
        _split_entries(obj, pairs)
        if not pairs and isinstance(obj, (dict, list)):
            problems.append(f"{sf}: no train/val/test lists found; expected "
                            '{"train": [...], "val": [...], "test": [...]}')
        split_pairs += [(sp, e, sf) for sp, e in pairs]

    cases: list[Case] = []
    seen_ids: dict[str, str] = {}
    for subset, folder in chosen:
        # ---- reports --------------------------------------------------------------------
        data: dict[str, Any] = {}
        for kind, fname in (("global", "global_finding.json"), ("impression", "impression.json"),
                            ("modal", "modal_wise_finding.json")):
            p = _find_json(folder, kind)
            if p is None:
                problems.append(f"subset {subset}: {folder / fname} is missing; download "
                                f"{subset}/{fname} from {_HF}")
                continue
            obj = _load_json(p, problems)
            if obj is None:
                continue
            if not isinstance(obj, dict):
                problems.append(f"{p}: expected a JSON object mapping case ids to text, got "
                                f"{type(obj).__name__}; re-download it from {_HF}")
                continue
            data[kind] = (p, obj)
        if len(data) < 3:
            continue

        gmap = {str(k).lower(): v for k, v in data["global"][1].items()}
        imap = {str(k).lower(): v for k, v in data["impression"][1].items()}
        ids = _Ids()
        for kind in ("global", "impression"):
            for k in data[kind][1]:
                ids.add(str(k))
        modal_path, modal = data["modal"]
        reports: dict[str, dict[str, str]] = {}

        def put(cid: str, mod: str, text: str) -> None:
            if not text:
                return
            r = reports.setdefault(cid, {})
            r[mod] = f"{r[mod]} {text}" if mod in r and text not in r[mod] else text

        for k, v in modal.items():
            k = str(k)
            if isinstance(v, dict):  # case id -> {modality -> text}
                cid = ids.add(k)
                for mk, mv in v.items():
                    hit = ids.match(_stem(str(mk)))
                    kind = _token_kind(hit[1] if hit and hit[1] else _stem(str(mk)))
                    if kind is None or kind == "mask":
                        problems.append(
                            f"{modal_path}: case {cid!r}: unknown modality {mk!r}; use one of "
                            f"{', '.join(BRAIN.modalities)} or a RadGenome name "
                            f"({', '.join(sorted(RADGENOME_ALIASES))})")
                        continue
                    put(cid, kind, _text(mv))
                continue
            name = _stem(Path(k).name)  # "<case>-<modality>" -> text
            hit = ids.match(name)
            if hit is None or not hit[1]:
                cut = _prefixes(name)[:1]
                hit = (ids.add(cut[0][0]), cut[0][1]) if cut and _token_kind(cut[0][1]) else None
            kind = _token_kind(hit[1]) if hit else None
            if hit is None or kind is None or kind == "mask":
                problems.append(
                    f"{modal_path}: key {k!r}: cannot tell its case and modality; write it as "
                    "'<case id>-<modality>' (e.g. BraTS-GLI-00012-000-t2f) or nest "
                    "{case id: {modality: text}}")
                continue
            put(hit[0], kind, _text(v))

        # ---- splits -------------------------------------------------------------------------
        split_of: dict[str, tuple[str, Path]] = {}
        for sp, entry, sf in split_pairs:
            hit = None
            for part in reversed(Path(entry).parts or (entry,)):
                hit = ids.match(_stem(part))
                if hit is not None:
                    break
            if hit is None:
                continue  # an id of another subset
            cid = hit[0]
            if cid in split_of and split_of[cid][0] != sp:
                problems.append(f"case {cid!r} ({subset}): listed in split {split_of[cid][0]!r} "
                                f"and {sp!r} ({sf}); keep it in one split only")
                continue
            split_of[cid] = (sp, sf)

        # ---- images -------------------------------------------------------------------------
        bases = _image_bases(subset, folder, image_root)
        finder = _ImageFinder(bases)
        looked = ", ".join(str(b) for b in bases) or str(folder)
        no_split: list[str] = []
        no_images: list[str] = []
        sub_cases: list[Case] = []
        for cid in ids.by_lower.values():
            if cid not in split_of:
                no_split.append(cid)
                continue
            mods: dict[str, str] = {}
            masks: dict[str, str] = {}
            files = finder.find(cid)
            if not files:
                no_images.append(cid)
                continue
            for f in files:
                kind = _file_kind(f, cid)
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
            rep = reports.get(cid, {})
            dropped = [m for m in rep if m not in mods]
            kept = {m: rep[m] for m in BRAIN.modalities if m in rep and m in mods}
            glob_text = " ".join(t for t in (_text(gmap.get(cid.lower())),
                                             _text(imap.get(cid.lower()))) if t)
            if glob_text:
                kept[GLOBAL_REPORT] = glob_text
            lacking = [m for m in _EXPECTED[subset] if m not in mods]
            if lacking or dropped:
                notes.append(f"{cid} ({subset})"
                             + (f": no {', '.join(lacking)} image" if lacking else "")
                             + (f"; report(s) for {', '.join(dropped)} dropped (no image)"
                                if dropped else ""))
            sub_cases.append(Case(
                case_id=cid, organ="brain", split=split_of[cid][0],
                label=RADGENOME_SUBSET_LABELS[subset],
                modalities={m: mods[m] for m in BRAIN.modalities if m in mods},
                reports=kept, masks=masks,
            ))
        if no_images and len(no_images) == len(ids.by_lower) - len(no_split):
            problems.append(
                f"subset {subset}: no images found for any of its {len(no_images)} cases "
                f"(looked in {looked}); download {_CHALLENGE[subset]} and put its case folders "
                f"(e.g. {folder / no_images[0]}/) there, pass image_root=, or leave the subset "
                "out")
        else:
            for cid in no_images:
                problems.append(
                    f"case {cid!r} ({subset}): no image files (looked for {cid}/ or {cid}-*.nii.gz "
                    f"in {looked}); add the case folder from {_CHALLENGE[subset]} or pass "
                    "image_root=")
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
    if not cases:
        raise ManifestError([f"no case with images and a split found under {root}; check the "
                             "subset folders and train_val_test_split.json"], root)
    if notes:
        warnings.warn(f"RadGenome-Brain {root}: " + "; ".join(notes), RadGenomeWarning,
                      stacklevel=2)
    return Manifest(cases, root)

