"""Writing a labelled dataset: ``save_to_disk`` plus JSONL and stats, swapped into place only once all are written."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from datasets import Dataset

from .stats import LabelingStats

__all__ = ["save_labels"]


def save_labels(
    ds: Dataset, output_dir: str | os.PathLike, stats: LabelingStats | None = None, push_to_hub: str | None = None
) -> Path:
    """Write ``ds`` with ``save_to_disk(output_dir)``, plus ``output_dir.jsonl`` and ``output_dir.stats.json``.

    Everything is written beside ``output_dir`` under temporary names first and moved into place only when all
    of it is written, so a crash, or a run that labelled nothing, never replaces an earlier output. A run with
    bad rows and no labelled row is refused with a ``ValueError`` naming the first bad row.
    """
    out = Path(output_dir)
    if len(ds) == 0 and stats is not None and stats.bad_rows:
        first = stats.bad_rows[0]
        raise ValueError(
            f"No row was labelled ({stats.summary()}); first bad row: task_id {first['task_id']!r}: "
            f"{first['reason']}. Nothing was written, {out} is unchanged; fix the candidates or problems."
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        ds.save_to_disk(str(tmp / "dataset"))
        ds.to_json(str(tmp / "rows.jsonl"), lines=True)
        if stats is not None:
            (tmp / "stats.json").write_text(json.dumps(stats.to_dict(), indent=2) + "\n")
        _swap_dir(tmp / "dataset", out)
        os.replace(tmp / "rows.jsonl", out.with_name(out.name + ".jsonl"))
        if stats is not None:
            os.replace(tmp / "stats.json", out.with_name(out.name + ".stats.json"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if push_to_hub:
        ds.push_to_hub(push_to_hub)
    return out


def _swap_dir(new: Path, out: Path) -> None:
    """Move the finished directory ``new`` to ``out``; what was at ``out`` goes beside ``new`` (to be deleted)."""
    if out.exists() or out.is_symlink():
        os.replace(out, new.with_name(new.name + ".old"))
    os.replace(new, out)
