"""On-disk embedding cache for frozen text encoders: immutable safetensors shards.

Layout (one sub-folder per encoder identity, so two models never share entries)::

    cache_dir/
      <sha256(identity)[:24]>/
        IDENTITY.txt                  # the full identity string, for humans
        shard-<time>-<pid>-<rand>.safetensors

Each shard holds two tensors, ``sha256`` (n, 32) uint8 -- the SHA-256 of each UTF-8 text -- and
``embeddings`` (n, hidden) float32, plus metadata ``{"format", "identity"}``.  One shard is written
per :meth:`EmbeddingCache.put` call (i.e. per ``encode`` call that computed something new).

Concurrency: a shard is written to a hidden temporary file in the same folder and published with
an atomic ``os.replace``; published shards are never modified, so any number of processes may
read and write the same cache without locks, and a reader never sees a partial file.  If two
processes encode the same text at once, both shards hold it (same values); that is harmless.
:meth:`compact` merges many small shards into one (write the merged shard first, then delete the
old ones; a reader that sees a shard vanish between listing and opening just misses those rows
until its next refresh, i.e. at worst re-encodes them).  No pickle anywhere.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import time
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

__all__ = ["EmbeddingCache", "text_key"]

FORMAT = "medmap-text-cache-v1"
_SUFFIX = ".safetensors"


def text_key(text: str) -> bytes:
    """The cache key of one text: SHA-256 of its UTF-8 bytes (exact text, no normalisation)."""
    return hashlib.sha256(text.encode("utf-8")).digest()


class EmbeddingCache:
    """Text-hash -> embedding store for one encoder identity under ``root``.

    Entries are loaded lazily: :meth:`get_many` re-lists the folder and reads only shards it has
    not seen yet, so entries written by other processes since the last call are picked up.
    """

    def __init__(self, root: str | Path, identity: str):
        self.identity = identity
        digest = hashlib.sha256(identity.encode("utf-8")).hexdigest()[:24]
        self.folder = Path(root).expanduser().resolve() / digest
        self._mem: dict[bytes, torch.Tensor] = {}
        self._seen: set[str] = set()
        self._hidden: int | None = None

    # -- reading -----------------------------------------------------------------------------
    def _shards(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        return sorted(
            p for p in self.folder.iterdir()
            if p.name.startswith("shard-") and p.name.endswith(_SUFFIX)
        )

    def _load_shard(self, path: Path) -> None:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT or meta.get("identity") != self.identity:
                return  # foreign or future-format shard: ignore rather than trust
            keys = f.get_tensor("sha256")
            emb = f.get_tensor("embeddings").to(torch.float32)
        if keys.ndim != 2 or keys.shape[1] != 32 or emb.shape[0] != keys.shape[0]:
            return
        for k, row in zip(keys.numpy(), emb):
            self._mem.setdefault(k.tobytes(), row)

    def refresh(self) -> None:
        """Read the shards written (by any process) since the last refresh."""
        for path in self._shards():
            if path.name in self._seen:
                continue
            try:
                self._load_shard(path)
            except FileNotFoundError:
                # removed by a concurrent compact(); its rows live on in the merged shard, which
                # this or the next refresh lists (at worst a text is re-encoded once)
                continue
            self._seen.add(path.name)

    def get_many(self, keys: Iterable[bytes]) -> dict[bytes, torch.Tensor]:
        """The cached embeddings among ``keys`` (missing keys are simply absent)."""
        keys = list(keys)
        if any(k not in self._mem for k in keys):
            self.refresh()
        return {k: self._mem[k] for k in keys if k in self._mem}

    def __len__(self) -> int:
        self.refresh()
        return len(self._mem)

    def __contains__(self, key: bytes) -> bool:
        return bool(self.get_many([key]))

    # -- writing -----------------------------------------------------------------------------
    def put(self, keys: list[bytes], embeddings: torch.Tensor) -> Path | None:
        """Store ``embeddings[i]`` under ``keys[i]`` as one new shard; returns its path."""
        if len(keys) != embeddings.shape[0]:
            raise ValueError(f"{len(keys)} keys for {embeddings.shape[0]} embeddings")
        if not keys:
            return None
        emb = embeddings.detach().to("cpu", torch.float32).contiguous().clone()
        key_t = torch.frombuffer(bytearray(b"".join(keys)), dtype=torch.uint8).view(len(keys), 32)
        path = self._write({"sha256": key_t, "embeddings": emb})
        for k, row in zip(keys, emb):
            self._mem.setdefault(k, row)
        self._seen.add(path.name)
        return path

    def _write(self, tensors: dict[str, torch.Tensor]) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        ident = self.folder / "IDENTITY.txt"
        if not ident.exists():
            tmp = self.folder / f".IDENTITY.{os.getpid()}.{secrets.token_hex(4)}.tmp"
            tmp.write_text(self.identity + "\n", encoding="utf-8")
            os.replace(tmp, ident)
        name = f"shard-{time.time_ns():020d}-{os.getpid()}-{secrets.token_hex(4)}{_SUFFIX}"
        final = self.folder / name
        tmp = self.folder / f".{name}.tmp"
        try:
            save_file(tensors, str(tmp), metadata={"format": FORMAT, "identity": self.identity})
            os.replace(tmp, final)
        finally:
            if tmp.exists():
                tmp.unlink()
        return final

    def compact(self) -> int:
        """Merge all current shards into one; returns the number of shards merged.

        Safe with concurrent readers and writers: shards written after the listing are left
        alone, and the merged shard is published before the old ones are deleted.
        """
        shards = self._shards()
        if len(shards) < 2:
            return 0
        self.refresh()
        merged: dict[bytes, torch.Tensor] = {}
        for path in shards:
            try:
                with safe_open(str(path), framework="pt") as f:
                    if (f.metadata() or {}).get("identity") != self.identity:
                        continue
                    keys, emb = f.get_tensor("sha256"), f.get_tensor("embeddings")
            except FileNotFoundError:
                continue
            for k, row in zip(keys.numpy(), emb):
                merged.setdefault(k.tobytes(), row)
        if not merged:
            return 0
        keys = list(merged)
        key_t = torch.frombuffer(bytearray(b"".join(keys)), dtype=torch.uint8).view(len(keys), 32)
        out = self._write({"sha256": key_t, "embeddings": torch.stack([merged[k] for k in keys])})
        self._seen.add(out.name)
        for path in shards:
            try:
                path.unlink()
            except FileNotFoundError:
                pass
        return len(shards)
