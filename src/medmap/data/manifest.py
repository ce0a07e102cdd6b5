"""Case / Manifest schema: one patient study per JSONL line.

A case holds ``case_id``, ``organ``, ``split``, ``label`` (class name, or index converted to the
name), ``modalities`` (modality name -> volume path), ``reports`` (modality name -> that
sequence's report; optional ``"global"``) and optional ``masks`` (``"lesion"``, an organ mask
keyed ``"organ"`` or by the organ's name such as ``"liver"``, or a modality name -> mask path).
Relative paths are resolved against the manifest's folder.

Example:
    >>> from medmap.data.manifest import Case, Manifest
    >>> m = Manifest([Case("c1", "brain", "train", "benign", {"T1WI": "c1/T1WI.nii.gz"})])
    >>> m.save("cases.jsonl")                                   # doctest: +SKIP
    >>> Manifest.load("cases.jsonl").cases[0].label             # doctest: +SKIP
    'benign'
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from medmap.config import UserError
from medmap.data.vocab import ORGANS


class ManifestError(UserError):
    """A manifest could not be parsed or is invalid; ``problems`` lists every finding."""

    def __init__(self, problems: list[str], source: str | Path | None = None):
        self.problems = list(problems)
        head = f"{source}: " if source else ""
        n = len(self.problems)
        msg = f"{head}{n} problem{'s' if n != 1 else ''} in manifest:\n" + "\n".join(
            f"  - {p}" for p in self.problems
        )
        super().__init__(msg)


@dataclass
class Case:
    """One patient study. Paths may be relative to the manifest's folder."""

    case_id: str
    organ: str
    split: str
    label: str | None
    modalities: dict[str, str]
    reports: dict[str, str] = field(default_factory=dict)
    masks: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        if not d["masks"]:
            d.pop("masks")
        return d

    def resolve(self, root: Path) -> Case:
        """A copy whose relative paths are made absolute against ``root``."""

        def fix(paths: dict[str, str]) -> dict[str, str]:
            return {k: str(p if Path(p).is_absolute() else (root / p)) for k, p in paths.items()}

        return Case(
            self.case_id, self.organ, self.split, self.label,
            fix(self.modalities), dict(self.reports), fix(self.masks),
        )

    @property
    def label_index(self) -> int | None:
        """Integer class index of the label (None for an unlabelled case)."""
        if self.label is None:
            return None
        return ORGANS[self.organ].class_index(self.label)


_REQUIRED = ("case_id", "organ", "split", "modalities")
_KNOWN = set(_REQUIRED) | {"label", "reports", "masks"}


def case_from_dict(d: Any, where: str) -> tuple[Case | None, list[str]]:
    """Parse one record; returns the case (or None) and the problems found, each naming ``where``."""
    problems: list[str] = []
    if not isinstance(d, dict):
        return None, [f"{where}: expected a JSON object per line, got {type(d).__name__}"]
    cid = d.get("case_id")
    tag = f"{where} case {cid!r}" if cid is not None else where
    for k in _REQUIRED:
        if k not in d or d[k] in (None, ""):
            problems.append(f"{tag}: field '{k}' is missing; add it to the record")
    for k in d:
        if k not in _KNOWN:
            problems.append(
                f"{tag}: unknown field '{k}'; allowed fields are {', '.join(sorted(_KNOWN))}"
            )
    for k in ("modalities", "reports", "masks"):
        v = d.get(k)
        if v is None:
            continue
        if not isinstance(v, dict) or not all(isinstance(a, str) for a in v):
            problems.append(f"{tag}: field '{k}' must be an object mapping names to strings")
        elif not all(isinstance(b, str) for b in v.values()):
            bad = [a for a, b in v.items() if not isinstance(b, str)]
            problems.append(f"{tag}: field '{k}' entries {bad} are not strings; give text/paths")
    if problems:
        return None, problems
    label = d.get("label")
    if isinstance(label, bool) or not (label is None or isinstance(label, (str, int))):
        return None, [f"{tag}: field 'label' must be a class name or integer index, got {label!r}"]
    if isinstance(label, int) and d["organ"] in ORGANS:
        try:
            label = ORGANS[d["organ"]].classes[ORGANS[d["organ"]].class_index(label)]
        except ValueError as e:
            return None, [f"{tag}: field 'label': {e}"]
    case = Case(
        case_id=str(d["case_id"]),
        organ=str(d["organ"]),
        split=str(d["split"]),
        label=None if label is None else str(label),
        modalities=dict(d["modalities"]),
        reports=dict(d.get("reports") or {}),
        masks=dict(d.get("masks") or {}),
    )
    return case, []


class Manifest:
    """An ordered list of cases plus the folder relative paths are resolved against."""

    def __init__(self, cases: Iterable[Case], root: str | Path | None = None):
        self.cases = list(cases)
        self.root = Path(root) if root is not None else Path.cwd()

    def __len__(self) -> int:
        return len(self.cases)

    def __iter__(self) -> Iterator[Case]:
        return iter(self.cases)

    def resolved(self) -> list[Case]:
        """Cases with absolute paths."""
        return [c.resolve(self.root) for c in self.cases]

    def select(self, *, split: str | None = None, organ: str | None = None) -> Manifest:
        """The cases of one split and/or organ."""
        keep = [
            c for c in self.cases
            if (split is None or c.split == split) and (organ is None or c.organ == organ)
        ]
        return Manifest(keep, self.root)

    # ---- I/O -------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path) -> Manifest:
        """Read a JSONL (or ``.csv``) manifest; raises :class:`ManifestError` listing every
        unparsable line."""
        path = Path(path)
        if not path.exists():
            raise ManifestError([f"manifest file {path} does not exist; check the path"], path)
        if path.suffix.lower() == ".csv":
            return cls.from_csv(path)
        cases: list[Case] = []
        problems: list[str] = []
        # Decode line by line so one non-UTF-8 report is reported against its case (the
        # validator flags the undecodable bytes, kept as surrogates) instead of failing the file.
        for i, raw in enumerate(path.read_bytes().splitlines(), 1):
            line = raw.decode("utf-8", errors="surrogateescape")
            if not line.strip():
                continue
            where = f"line {i}"
            try:
                d = json.loads(line)
            except json.JSONDecodeError as e:
                problems.append(f"{where}: invalid JSON ({e.msg} at column {e.colno}); "
                                "each line must be one JSON object")
                continue
            case, errs = case_from_dict(d, where)
            problems.extend(errs)
            if case is not None:
                cases.append(case)
        if problems:
            raise ManifestError(problems, path)
        if not cases:
            raise ManifestError(["the manifest holds no cases; add one JSON object per line"], path)
        return cls(cases, path.parent)

    @classmethod
    def from_csv(cls, path: str | Path) -> Manifest:
        """Import a CSV with columns ``case_id, organ, split, label`` plus ``mod:<name>``,
        ``report:<name>`` and ``mask:<name>`` columns (empty cells are skipped)."""
        path = Path(path)
        problems: list[str] = []
        cases: list[Case] = []
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            for i, row in enumerate(reader, 2):
                d: dict[str, Any] = {"modalities": {}, "reports": {}, "masks": {}}
                for col, val in row.items():
                    if col is None or val is None or val == "":
                        continue
                    prefix, _, name = col.partition(":")
                    if name and prefix in ("mod", "report", "mask"):
                        key = {"mod": "modalities", "report": "reports", "mask": "masks"}[prefix]
                        d[key][name] = val
                    else:
                        d[col] = val
                if isinstance(d.get("label"), str) and d["label"].isdigit():
                    d["label"] = int(d["label"])
                case, errs = case_from_dict(d, f"row {i}")
                problems.extend(errs)
                if case is not None:
                    cases.append(case)
        if problems:
            raise ManifestError(problems, path)
        return cls(cases, path.parent)

    def save(self, path: str | Path) -> Path:
        """Write JSONL, one case per line (paths as stored)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8") as f:
            for c in self.cases:
                f.write(json.dumps(c.to_json(), ensure_ascii=False) + "\n")
        return path
