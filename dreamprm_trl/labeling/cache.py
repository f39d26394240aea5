"""The resumable label cache and deterministic sharding.

Labelling is the costly stage (K x M programs per trajectory), so every finished unit of work (one prefix with
its rollout batch, or one program's verdict) is appended to an fsync'd JSONL cache keyed by a content hash of
everything that determines it; rerunning the same call after a crash skips finished units, and ``shard=(i, n)``
splits trajectories across machines deterministically (`shard_of`).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["CACHE_VERSION", "LabelCache", "MemoryCache", "content_hash", "parse_shard", "shard_of"]

CACHE_VERSION = 1


def content_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _read_cache_file(path: Path) -> tuple[list[dict[str, Any]], int]:
    """Complete records of one cache file and the byte length of its valid part (a torn last line is dropped)."""
    data = path.read_bytes()
    records, good = [], 0
    pos = 0
    while pos < len(data):
        end = data.find(b"\n", pos)
        if end < 0:
            break  # a line cut short by a kill: never fsync'd as finished
        line = data[pos:end]
        pos = end + 1
        good = pos
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict) and "key" in record:
            records.append(record)
        else:
            warnings.warn(f"Ignoring a corrupt line in label cache {path} ending at byte {pos}.", stacklevel=3)
    return records, good


class LabelCache:
    """Append-only JSONL store of finished work units, one directory shared by all shards.

    Each shard appends to its own file (so shards on a shared filesystem never interleave writes) and reads
    every ``*.jsonl`` file in the directory. Each line is ``{"key": ..., **result}``; lines are flushed and
    fsync'd as soon as their unit finishes. A torn last line (the process was killed mid-write) is ignored and
    cut off before new lines are appended.
    """

    def __init__(self, cache_dir: str | os.PathLike, shard: tuple[int, int] = (0, 1)) -> None:
        self.dir = Path(cache_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / f"labels-{shard[0]:05d}-of-{shard[1]:05d}.jsonl"
        self.records: dict[str, dict[str, Any]] = {}
        for path in sorted(self.dir.glob("*.jsonl")):
            records, good = _read_cache_file(path)
            for rec in records:
                self.records[rec["key"]] = rec
            if path == self.path and good < path.stat().st_size:
                with open(path, "r+b") as fh:
                    fh.truncate(good)

    def __contains__(self, key: str) -> bool:
        return key in self.records

    def __len__(self) -> int:
        return len(self.records)

    def get(self, key: str) -> dict[str, Any] | None:
        return self.records.get(key)

    def append(self, records: Sequence[dict[str, Any]]) -> None:
        if not records:
            return
        with open(self.path, "a", encoding="utf-8") as fh:
            for rec in records:
                fh.write(json.dumps(rec, sort_keys=True) + "\n")
                self.records[rec["key"]] = rec
            fh.flush()
            os.fsync(fh.fileno())

    def hold(self, records: Sequence[dict[str, Any]]) -> None:
        """Keep ``records`` for this run only (never written): a rerun computes them again."""
        for rec in records:
            self.records[rec["key"]] = rec


class MemoryCache(LabelCache):
    def __init__(self) -> None:
        self.records = {}

    def append(self, records: Sequence[dict[str, Any]]) -> None:
        for rec in records:
            self.records[rec["key"]] = rec


def parse_shard(spec: str | tuple[int, int]) -> tuple[int, int]:
    """``"i/n"`` (or a tuple) -> ``(i, n)`` with ``0 <= i < n``."""
    if isinstance(spec, str):
        try:
            i, n = (int(x) for x in spec.split("/"))
        except ValueError:
            raise ValueError(f"Shard must look like 'i/n' (e.g. '0/4'), got {spec!r}.") from None
    else:
        i, n = spec
    if not 0 <= i < n:
        raise ValueError(f"Shard index must satisfy 0 <= i < n, got {i}/{n}.")
    return i, n


def shard_of(task_id: str, code: str, num_shards: int) -> int:
    """The shard a trajectory belongs to: a content hash, so independent of input order and machine."""
    return int(hashlib.sha256(f"{task_id}\0{code}".encode()).hexdigest()[:15], 16) % num_shards
