"""RadGenome-Brain MRI release files: names, modality spellings, report and split JSON.

Helpers of :mod:`medmap.data.sources.radgenome` (which re-exports the public names). The
release (https://huggingface.co/datasets/JiayuLei/RadGenome-Brain_MRI, file tree of ``main``):
``train_val_test_split.json`` at the top, and ``BraTS_GLI/``, ``BraTS_MEN/``, ``BraTS_MET/``,
``ISLES22/``, ``WMH/`` each holding ``global_finding.json``, ``impression.json`` and
``modal_wise_finding.json``. Ids are case ids or image names (``BraTS-GLI-00012-000-t2f``,
``sub-strokecase0106_ses-0001_dwi``, ``Singapore_69_FLAIR``, as in the AutoRG-Brain repository's
example files).

Example:
    >>> from medmap.data.sources.radgenome_text import radgenome_modality
    >>> radgenome_modality("t2f")
    'T2FLAIR'
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medmap.data.vocab import BRAIN, GLOBAL_REPORT, MODALITY_ALIASES

__all__ = ["RADGENOME_ALIASES", "radgenome_modality"]

HF = "https://huggingface.co/datasets/JiayuLei/RadGenome-Brain_MRI"

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

MASK_TOKENS = {"seg", "mask", "msk", "label", "labels", "wmh", "lesion", "roi"}
# Volumes that are neither a modality of the manifest nor a mask: skipped silently (WMH's 3D T1
# duplicates its T1, which is used instead).
SKIPPED = {"3dt1"}

SUBSET_ALIASES: dict[str, str] = {
    "bratsgli": "BraTS_GLI", "gli": "BraTS_GLI", "glioma": "BraTS_GLI", "brats2021": "BraTS_GLI",
    "bratsmen": "BraTS_MEN", "men": "BraTS_MEN", "meningioma": "BraTS_MEN",
    "bratsmet": "BraTS_MET", "met": "BraTS_MET", "metastasis": "BraTS_MET",
    "metastases": "BraTS_MET",
    "isles22": "ISLES22", "isles2022": "ISLES22", "isles": "ISLES22",
    "wmh": "WMH", "wmh2017": "WMH",
}

SPLIT_NAMES: dict[str, str] = {
    "train": "train", "training": "train", "tr": "train",
    "val": "val", "valid": "val", "validation": "val", "dev": "val",
    "test": "test", "testing": "test", "ts": "test",
}

JSON_NAMES: dict[str, tuple[str, ...]] = {
    "global": ("globalfinding", "globalfindings"),
    "impression": ("impression", "impressions"),
    "modal": ("modalwisefinding", "modalwisefindings", "modalitywisefinding",
              "modalitywisefindings"),
    "split": ("trainvaltestsplit",),
}

def norm(s: str) -> str:
    return re.sub(r"[^a-z0-9]", "", s.lower())


_MODALITIES: dict[str, str] = {norm(m): m for m in BRAIN.modalities}
for _a, _c in list(MODALITY_ALIASES.items()) + list(RADGENOME_ALIASES.items()):
    if _c in BRAIN.modalities:
        _MODALITIES.setdefault(norm(_a), _c)


def radgenome_modality(name: str) -> str | None:
    """Canonical brain modality of a RadGenome / challenge name (``"t2f"`` -> ``"T2FLAIR"``)."""
    return _MODALITIES.get(norm(name))


def canonical_subset(name: str) -> str | None:
    return SUBSET_ALIASES.get(norm(name))


def stem(name: str) -> str:
    low = name.lower()
    for ext in (".nii.gz", ".nii", ".json", ".txt"):
        if low.endswith(ext):
            return name[: -len(ext)]
    return name


def prefixes(name: str) -> list[tuple[str, str]]:
    """``(prefix, rest)`` for every cut of ``name`` at a ``-``/``_``, longest prefix first."""
    return [(name[: m.start()], name[m.end():]) for m in reversed(list(re.finditer(r"[-_]", name)))]


def token_kind(rest: str) -> str | None:
    """Modality name, ``"mask"``, or None for the part of a name after the case id."""
    for cand in (rest, re.split(r"[-_]", rest)[-1] if rest else ""):
        if not cand:
            continue
        mod = radgenome_modality(cand)
        if mod is not None:
            return mod
        if norm(cand) in MASK_TOKENS:
            return "mask"
    return None


def text_of(v: Any) -> str:
    """Report text from a string, a list of strings, or a dict holding one."""
    if v is None:
        return ""
    if isinstance(v, str):
        return v.strip()
    if isinstance(v, (list, tuple)):
        return " ".join(t for t in (text_of(x) for x in v) if t)
    if isinstance(v, dict):
        for k, x in v.items():
            if norm(str(k)) in ("impression", "impressions", "globalfinding", "finding",
                                 "findings", "report", "text"):
                return text_of(x)
        return " ".join(t for t in (text_of(x) for x in v.values() if isinstance(x, str)) if t)
    return str(v).strip()


def find_json(folder: Path, kind: str) -> Path | None:
    names = JSON_NAMES[kind]
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.name.lower().endswith(".json") and norm(stem(p.name)) in names:
            return p
    return None


def load_json(path: Path, problems: list[str]) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as e:
        problems.append(f"{path}: invalid JSON ({e.msg} at line {e.lineno} column {e.colno}); "
                        f"re-download the file from {HF}")
    except UnicodeDecodeError as e:
        problems.append(f"{path}: not UTF-8 text ({e}); re-download the file from {HF}")
    return None


class CaseIds:
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
        for prefix, rest in prefixes(name):
            hit = self.get(prefix)
            if hit is not None:
                return hit, rest
        return None


def split_entries(obj: Any, out: list[tuple[str, str]], split: str | None = None) -> None:
    """Collect ``(split, id)`` pairs from any nesting of split names, subsets and lists."""
    if isinstance(obj, str):
        if split is not None:
            out.append((split, obj))
    elif isinstance(obj, (list, tuple)):
        for x in obj:
            split_entries(x, out, split)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            ks = SPLIT_NAMES.get(norm(str(k)))
            if ks is not None:
                split_entries(v, out, ks)
            elif isinstance(v, str) and SPLIT_NAMES.get(norm(v)) and split is None:
                out.append((SPLIT_NAMES[norm(v)], str(k)))  # {"case": "train"} form
            else:
                split_entries(v, out, split)




@dataclass
class SubsetReports:
    """The reports of one subset: case ids, modal-wise findings, global finding + impression."""

    ids: CaseIds
    modal: dict[str, dict[str, str]] = field(default_factory=dict)   # case -> modality -> text
    global_text: dict[str, str] = field(default_factory=dict)        # case (lower) -> text

    def for_case(self, cid: str, modalities: Iterable[str]) -> tuple[dict[str, str], list[str]]:
        """``Case.reports`` of ``cid`` given the modalities it has, and the modalities whose
        finding was dropped because the case has no image of them."""
        have = set(modalities)
        rep = self.modal.get(cid, {})
        kept = {m: rep[m] for m in BRAIN.modalities if m in rep and m in have}
        glob = self.global_text.get(cid.lower())
        if glob:
            kept[GLOBAL_REPORT] = glob
        return kept, [m for m in rep if m not in have]


def read_reports(subset: str, folder: Path, problems: list[str]) -> SubsetReports | None:
    """The three report JSONs of a subset folder (None when one is missing or invalid)."""
    data: dict[str, Any] = {}
    for kind, fname in (("global", "global_finding.json"), ("impression", "impression.json"),
                        ("modal", "modal_wise_finding.json")):
        p = find_json(folder, kind)
        if p is None:
            problems.append(f"subset {subset}: {folder / fname} is missing; download "
                            f"{subset}/{fname} from {HF}")
            continue
        obj = load_json(p, problems)
        if obj is None:
            continue
        if not isinstance(obj, dict):
            problems.append(f"{p}: expected a JSON object mapping case ids to text, got "
                            f"{type(obj).__name__}; re-download it from {HF}")
            continue
        data[kind] = (p, obj)
    if len(data) < 3:
        return None
    gmap = {str(k).lower(): v for k, v in data["global"][1].items()}
    imap = {str(k).lower(): v for k, v in data["impression"][1].items()}
    ids = CaseIds()
    for kind in ("global", "impression"):
        for k in data[kind][1]:
            ids.add(str(k))
    out = SubsetReports(ids)
    modal_path, modal = data["modal"]

    def put(cid: str, mod: str, text: str) -> None:
        if not text:
            return
        r = out.modal.setdefault(cid, {})
        r[mod] = f"{r[mod]} {text}" if mod in r and text not in r[mod] else text

    for k, v in modal.items():
        k = str(k)
        if isinstance(v, dict):  # case id -> {modality -> text}
            cid = ids.add(k)
            for mk, mv in v.items():
                hit = ids.match(stem(str(mk)))
                kind = token_kind(hit[1] if hit and hit[1] else stem(str(mk)))
                if kind is None or kind == "mask":
                    problems.append(
                        f"{modal_path}: case {cid!r}: unknown modality {mk!r}; use one of "
                        f"{', '.join(BRAIN.modalities)} or a RadGenome name "
                        f"({', '.join(sorted(RADGENOME_ALIASES))})")
                    continue
                put(cid, kind, text_of(mv))
            continue
        name = stem(Path(k).name)  # "<case>-<modality>" -> text
        hit = ids.match(name)
        if hit is None or not hit[1]:
            cut = prefixes(name)[:1]
            hit = (ids.add(cut[0][0]), cut[0][1]) if cut and token_kind(cut[0][1]) else None
        kind = token_kind(hit[1]) if hit else None
        if hit is None or kind is None or kind == "mask":
            problems.append(
                f"{modal_path}: key {k!r}: cannot tell its case and modality; write it as "
                "'<case id>-<modality>' (e.g. BraTS-GLI-00012-000-t2f) or nest "
                "{case id: {modality: text}}")
            continue
        put(hit[0], kind, text_of(v))
    for low, cid in ids.by_lower.items():
        glob = " ".join(t for t in (text_of(gmap.get(low)), text_of(imap.get(low))) if t)
        if glob:
            out.global_text[low] = glob
    return out


def read_split_files(root: Path, folders: Iterable[Path],
                     problems: list[str]) -> list[tuple[str, str, Path]]:
    """``(split, id, file)`` of the root's and the subset folders' split files."""
    files = [p for p in [find_json(root, "split")] + [find_json(f, "split") for f in folders]
             if p is not None]
    if not files:
        problems.append(f"split file {root / 'train_val_test_split.json'} is missing (nor in any "
                        f"subset folder); download it from {HF}")
    out: list[tuple[str, str, Path]] = []
    for sf in files:
        obj = load_json(sf, problems)
        if obj is None:
            continue
        pairs: list[tuple[str, str]] = []
        split_entries(obj, pairs)
        if not pairs and isinstance(obj, (dict, list)):
            problems.append(f"{sf}: no train/val/test lists found; expected "
                            '{"train": [...], "val": [...], "test": [...]}')
        out += [(sp, e, sf) for sp, e in pairs]
    return out


def assign_splits(subset: str, ids: CaseIds, pairs: list[tuple[str, str, Path]],
                  problems: list[str]) -> dict[str, tuple[str, Path]]:
    """Case id -> ``(split, file)`` for the ids of one subset (other ids are ignored)."""
    split_of: dict[str, tuple[str, Path]] = {}
    for sp, entry, sf in pairs:
        hit = None
        for part in reversed(Path(entry).parts or (entry,)):
            hit = ids.match(stem(part))
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
    return split_of
