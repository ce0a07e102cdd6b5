"""Small helpers the downstream tasks share: JSON output and safe file names."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from medmap.config import UserError

__all__ = ["write_json", "safe_name", "TaskNotApplicable"]


class TaskNotApplicable(UserError):
    """A downstream task cannot run on this model or data by design (e.g. segmentation needs a
    Swin expert); comparisons record it as "n/a". Any other error is a failure, not "n/a"."""


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        v = float(x)
        return v if np.isfinite(v) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, Path):
        return str(x)
    return x


def write_json(obj: Any, path: str | Path) -> Path:
    """JSON with NaN/Inf as null and numpy scalars as plain numbers."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(_jsonable(obj), indent=2), encoding="utf-8")
    return p


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9+._-]", "_", name) or "_"
