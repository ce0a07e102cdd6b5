"""Finding RadGenome-Brain case images in the challenge downloads as unpacked.

Each image root is walked once; a case id is then looked up, anywhere below the root, as

* a folder named by the id: BraTS 2023 ``<top folder>/BraTS-GLI-00012-000/`` (any top folder,
  e.g. ``ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData/``); ISLES 2022
  ``sub-strokecase0001/`` (every such folder counts, so the lesion mask in
  ``derivatives/sub-strokecase0001/ses-0001/`` joins the images of
  ``[rawdata/]sub-strokecase0001/ses-0001/{anat,dwi}/``);
* a nested folder whose names joined by ``_`` give the id: WMH 2017 ``Utrecht/0/`` is case
  ``Utrecht_0`` (also ``Amsterdam/GE3T/100/`` for ``GE3T_100``, ``Amsterdam_GE3T_100`` or
  ``Amsterdam_100``); likewise ``sub-strokecase0001/ses-0001/`` for
  ``sub-strokecase0001_ses-0001``;
* a folder named by a prefix of the id, keeping the files whose name starts with the id;
* ``<id>-<modality>.nii.gz`` / ``<id>_<modality>.nii.gz`` files anywhere.

Below a case folder every NIfTI file counts (searched recursively); where a ``pre/`` folder
exists (WMH's preprocessed images) the ``orig/`` copies are dropped.

Example:
    >>> from medmap.data.sources.radgenome_images import TreeIndex
    >>> TreeIndex("downloads").find("Utrecht_0")                       # doctest: +SKIP
    [PosixPath('downloads/training/Utrecht/0/pre/FLAIR.nii.gz'), ...]
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from medmap.config import UserError
from medmap.data.sources.radgenome_text import (
    MASK_TOKENS,
    SKIPPED,
    canonical_subset,
    norm,
    prefixes,
    radgenome_modality,
    stem,
    token_kind,
)

__all__ = ["TreeIndex", "file_kind", "is_nifti", "parse_image_roots"]


def is_nifti(name: str) -> bool:
    return name.lower().endswith((".nii", ".nii.gz")) and not name.startswith(".")


def _aliases(parts: tuple[str, ...]) -> set[str]:
    """Names a folder answers to: its own, and joined with its parent / grandparent."""
    out = {parts[-1]}
    if len(parts) >= 2:
        out.add(f"{parts[-2]}_{parts[-1]}")
    if len(parts) >= 3:
        out.add(f"{parts[-3]}_{parts[-2]}_{parts[-1]}")
        out.add(f"{parts[-3]}_{parts[-1]}")
    return {a.lower() for a in out}


class TreeIndex:
    """Every folder and NIfTI file below ``root``, walked once (symlinks followed, hidden
    entries skipped)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.dirs: dict[str, list[Path]] = {}       # alias (lower case) -> folders
        self.flat: dict[str, list[Path]] = {}       # stem prefix (lower case) -> files
        self.files: dict[Path, list[Path]] = {}     # folder -> its NIfTI files
        self.children: dict[Path, list[Path]] = {}  # folder -> its sub-folders
        seen: set[str] = set()
        for dirpath, dirnames, filenames in os.walk(self.root, followlinks=True):
            real = os.path.realpath(dirpath)
            if real in seen:  # a symlink loop
                dirnames[:] = []
                continue
            seen.add(real)
            d = Path(dirpath)
            dirnames[:] = sorted(n for n in dirnames if not n.startswith("."))
            self.children[d] = [d / n for n in dirnames]
            parts = d.relative_to(self.root).parts
            if parts:
                for a in _aliases(parts):
                    self.dirs.setdefault(a, []).append(d)
            files = [d / f for f in sorted(filenames) if is_nifti(f)]
            self.files[d] = files
            for f in files:
                s = stem(f.name)
                for pre, _ in prefixes(s):
                    self.flat.setdefault(pre.lower(), []).append(f)

    def _below(self, d: Path) -> list[tuple[Path, tuple[str, ...]]]:
        """NIfTI files below ``d`` with their folder parts relative to ``d``."""
        out, stack = [], [(d, ())]
        while stack:
            cur, rel = stack.pop()
            out += [(f, rel) for f in self.files.get(cur, [])]
            stack += [(c, rel + (c.name.lower(),)) for c in self.children.get(cur, [])]
        return out

    def find(self, cid: str) -> list[Path]:
        """The NIfTI files of case ``cid`` (empty when none is found)."""
        low = cid.lower()
        hits: list[tuple[Path, tuple[str, ...]]] = []
        for d in self.dirs.get(low, []):
            hits += self._below(d)
        if not hits:
            for pre, _ in prefixes(cid):
                for d in self.dirs.get(pre.lower(), []):
                    hits += [(f, rel) for f, rel in self._below(d)
                             if stem(f.name).lower().startswith(low)]
                if hits:
                    break
        if not hits:
            hits = [(f, ()) for f in self.flat.get(low, [])]
        if any("pre" in rel for _, rel in hits):  # WMH: pre/ (preprocessed) over orig/
            hits = [(f, rel) for f, rel in hits if "orig" not in rel]
        uniq: dict[str, Path] = {}
        for f, _ in hits:
            uniq.setdefault(os.path.realpath(f), f)
        return sorted(uniq.values())


def file_kind(p: Path, cid: str, skip: Iterable[str] = ()) -> str | None:
    """Modality, ``"mask"``, ``"skip"`` (not used) or None (unknown) of a case's file."""
    s = stem(p.name)
    rest = s[len(cid):].lstrip("-_") if s.lower().startswith(cid.lower()) else s
    if not rest:
        return None
    tokens = [t for t in re.split(r"[-_]", rest) if t]
    if norm(rest) in SKIPPED or (tokens and norm(tokens[-1]) in SKIPPED):
        return "skip"
    modality_mask = (len(tokens) >= 2 and norm(tokens[-1]) in MASK_TOKENS
                     and any(radgenome_modality(t) for t in tokens[:-1]))
    if modality_mask or norm(rest) == "brainmask" or "brain" in map(norm, tokens):
        return "skip"  # a sequence's brain mask (e.g. WMH's FLAIR_mask), not a lesion mask
    kind = token_kind(rest)
    return "skip" if kind in set(skip) else kind


def parse_image_roots(image_root: Any) -> tuple[list[Path], dict[str, list[Path]]]:
    """``(roots searched for every subset, {subset: roots})`` from ``image_root``: a path, a
    ``"SUBSET=PATH"`` string, a ``{subset: path or paths}`` mapping, or a list of these.

    Example:
        >>> parse_image_roots(["/data/brats", "WMH=/data/wmh"])
        ([PosixPath('/data/brats')], {'WMH': [PosixPath('/data/wmh')]})
    """
    generic: list[Path] = []
    per: dict[str, list[Path]] = {}
    if image_root is None:
        return generic, per

    def add(subset: str | None, value: Any) -> None:
        vals = value if isinstance(value, (list, tuple)) else [value]
        for v in vals:
            p = Path(v).expanduser()
            (generic if subset is None else per.setdefault(subset, [])).append(p)

    items = ([image_root] if isinstance(image_root, (str, Path, Mapping)) else list(image_root))
    for it in items:
        if isinstance(it, Mapping):
            for k, v in it.items():
                s = canonical_subset(str(k))
                if s is None:
                    raise UserError(f"image_root: unknown RadGenome subset {k!r}; use one of "
                                    "BraTS_GLI, BraTS_MEN, BraTS_MET, ISLES22, WMH")
                add(s, v)
        elif isinstance(it, str) and "=" in it and not Path(it).exists():
            head, _, tail = it.partition("=")
            s = canonical_subset(head.strip())
            if s is None or not tail.strip():
                raise UserError(f"--image-root {it!r}: write SUBSET=PATH with SUBSET one of "
                                "BraTS_GLI, BraTS_MEN, BraTS_MET, ISLES22, WMH (or a plain PATH)")
            add(s, tail.strip())
        else:
            add(None, it)
    return generic, per
