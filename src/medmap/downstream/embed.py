"""Embedding export: volume embeddings per (case, modality) and text embeddings per report.

Written to ``out_dir``:

* ``volume_embeddings.npy`` (N_v, embed_dim) float32 -- ``encode_image`` of every volume of
  the model's organ and modalities (all splits unless ``split``), L2-normalised unless
  ``normalize=False``; row ``i`` is row ``i`` of ``volumes.csv`` (``row, case_id, modality,
  split, label, path``);
* ``text_embeddings.npy`` (N_t, embed_dim) float32 -- every non-empty report (modality reports
  and the ``global`` one) through the frozen text encoder and ``text_proj``, in the same space;
  index ``texts.csv`` (``row, case_id, report_key, split, label, text``);
* ``embeddings.json`` -- the model, shapes, normalisation and file names;
* ``volumes.parquet`` / ``texts.parquet`` as well when ``pyarrow`` is installed.

Example:
    >>> from medmap.downstream.embed import export_embeddings
    >>> info = export_embeddings("runs/pretrain/model", "sim/manifest.jsonl", "emb/")  # doctest: +SKIP
    >>> info["volume_embeddings"]["shape"]                                              # doctest: +SKIP
    [112, 96]
"""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from medmap.config import UserError
from medmap.data.manifest import Manifest
from medmap.downstream.common import write_json
from medmap.downstream.features import text_embeddings, volume_embeddings
from medmap.downstream.vlm import LoadedVLM, load_vlm

__all__ = ["export_embeddings"]


def _write_index(rows: list[dict[str, Any]], path: Path, fields: list[str]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerow({k: "" if r.get(k) is None else r[k] for k in fields})
    if importlib.util.find_spec("pyarrow") is not None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist([{k: r.get(k) for k in fields} for r in rows]),
                       str(path.with_suffix(".parquet")))


def export_embeddings(model: str | Path | LoadedVLM | None, manifest: Manifest | str | Path,
                      out_dir: str | Path, *, split: str | None = None, normalize: bool = True,
                      text_encoder=None, loader=None, cache_dir: str | Path | None = None,
                      batch_size: int = 4, device: str | None = None, experiment=None,
                      seed: int = 0) -> dict[str, Any]:
    """Write the embedding files (see module doc); returns the ``embeddings.json`` content."""
    vlm = load_vlm(model, experiment=experiment, device=device, seed=seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    items = vlm.volume_items(manifest, split)
    if not items:
        raise UserError(f"no {vlm.organ} volume of the model's modalities "
                        f"({', '.join(vlm.modalities)})" + (f" in split {split!r}" if split else ""))
    if loader is None:
        loader = vlm.loader(cache_dir)
    vemb = volume_embeddings(vlm, items, loader, batch_size, normalize=normalize)
    vrows = [{"row": i, "case_id": it.case.case_id, "modality": it.modality,
              "split": it.case.split, "label": it.case.label, "path": it.path}
             for i, it in enumerate(items)]
    trows: list[dict[str, Any]] = []
    for c in vlm.cases(manifest, split):
        for key, text in c.reports.items():
            if isinstance(text, str) and text.strip():
                trows.append({"row": len(trows), "case_id": c.case_id, "report_key": key,
                              "split": c.split, "label": c.label, "text": text})
    temb = text_embeddings(vlm, [r["text"] for r in trows], text_encoder, normalize=normalize)
    np.save(out / "volume_embeddings.npy", vemb.astype(np.float32))
    np.save(out / "text_embeddings.npy", temb.astype(np.float32))
    _write_index(vrows, out / "volumes.csv", ["row", "case_id", "modality", "split", "label",
                                              "path"])
    _write_index(trows, out / "texts.csv", ["row", "case_id", "report_key", "split", "label",
                                            "text"])
    info = {"model": vlm.name, "organ": vlm.organ, "modalities": vlm.modalities,
            "split": split, "normalized": normalize, "embed_dim": int(vlm.model.cfg.embed_dim),
            "volume_embeddings": {"file": "volume_embeddings.npy", "index": "volumes.csv",
                                  "shape": list(vemb.shape)},
            "text_embeddings": {"file": "text_embeddings.npy", "index": "texts.csv",
                                "shape": list(temb.shape)},
            "parquet": importlib.util.find_spec("pyarrow") is not None}
    write_json(info, out / "embeddings.json")
    return info
