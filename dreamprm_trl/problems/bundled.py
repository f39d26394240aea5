"""Data shipped with the package (see dreamprm_trl/data/README.md for sources and licences): the ClassEval tasks,
and model completions for HumanEval and ClassEval."""

from __future__ import annotations

import gzip
import importlib.resources
import json
from collections.abc import Sequence

from .classeval import load_classeval
from .problem import Problem

BUNDLED = ("humaneval", "classeval")  # the names `files.load_problems` / `files.load_candidates` accept

def _bundled(name: str):
    resource = importlib.resources.files("dreamprm_trl") / "data" / name
    if not resource.is_file():
        raise FileNotFoundError(
            f"bundled data file dreamprm_trl/data/{name} is missing; reinstall dreamprm-trl or regenerate it "
            "with `python benchmarks/make_bundled_data.py`"
        )
    return resource


def _bundled_jsonl(name: str) -> list[dict]:
    with _bundled(name).open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_bundled_humaneval_candidates(n: int | None = None) -> dict[str, list[str]]:
    """CodeGen-16B completions for every HumanEval problem (20 per problem, shipped), in sample order;
    ``n`` keeps the first ``n``. A program is ``problem.prompt + completion``."""
    out: dict[str, list[str]] = {}
    for row in sorted(_bundled_jsonl("humaneval_candidates.jsonl.gz"), key=_sample_key):
        out.setdefault(row["task_id"], []).append(row["completion"])
    return {k: v[:n] for k, v in out.items()} if n is not None else out


def load_bundled_humaneval_reference_labels(n: int | None = None) -> dict[str, list[bool]]:
    """The reference pass/fail label of each bundled HumanEval completion (same order as the completions); a
    reference for comparison: the project's own labels come from ``sandbox``."""
    out: dict[str, list[bool]] = {}
    for row in sorted(_bundled_jsonl("humaneval_candidates.jsonl.gz"), key=_sample_key):
        out.setdefault(row["task_id"], []).append(bool(row["passed"]))
    return {k: v[:n] for k, v in out.items()} if n is not None else out


def _sample_key(row: dict) -> tuple:
    number = row["task_id"].rsplit("/", 1)[-1].rsplit("_", 1)[-1]
    return (int(number) if number.isdigit() else 0, row["task_id"], row.get("model", ""), row["sample_idx"])


def load_bundled_classeval() -> list[Problem]:
    """The 100 ClassEval tasks (shipped subset of fields)."""
    with importlib.resources.as_file(_bundled("classeval_tasks.json.gz")) as path:
        return load_classeval(path)


def load_bundled_classeval_candidates(models: Sequence[str] | None = None) -> dict[str, list[str]]:
    """Extracted code of the shipped ClassEval completions (5 models x 5 samples per task, ordered by model then
    sample); ``models`` keeps only those models (ChatGLM, ChatGPT, CodeGeeX, GPT-4, Vicuna)."""
    rows = _bundled_jsonl("classeval_candidates.jsonl.gz")
    known = sorted({r["model"] for r in rows})
    if models is not None and set(models) - set(known):
        raise ValueError(f"unknown ClassEval models {sorted(set(models) - set(known))}; shipped: {known}")
    out: dict[str, list[str]] = {}
    for row in sorted(rows, key=_sample_key):
        if models is None or row["model"] in models:
            out.setdefault(row["task_id"], []).append(row["code"])
    return out
