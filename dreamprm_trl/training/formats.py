"""The dataset formats `FunctionStepPRMTrainer` accepts, checked once at construction and mapped to step rows.

Accepted formats (the README's "Dataset formats" section documents the same table, `FORMATS`):

- **step rows** (this library's): ``{"prompt", "steps" | "code", "labels" | "mc_labels"}``;
- **TRL ``stepwise_supervision``**: ``{"prompt", "completions", "labels"}`` with booleans or floats;
- meta rows: ``{"prompt", "steps" | "code" | "completions", "passed"}``;
- evaluation rows: step rows (-> ``eval_loss``) and/or candidate groups ``{"task_id", "passed", ...}``.

In every format ``prompt`` may be a string or a conversation (a list of ``{"role", "content"}`` messages, TRL's
conversational format); conversations are rendered with the tokenizer's chat template (generation prompt added).
Rows are converted lazily for an `IterableDataset`, with ``Dataset.map`` otherwise.
"""

from __future__ import annotations

from typing import Any

from datasets import Dataset, IterableDataset

from ..schema import STEP_COLUMNS, TASK_ID, VERDICT
from ..schema import label_key as schema_label_key
FORMATS = {
    "train": (
        "step rows {'prompt': str, 'steps': list[str] (or 'code': str), 'labels' or 'mc_labels': list[float]}",
        "TRL stepwise_supervision {'prompt': str, 'completions': list[str], 'labels': list[bool | float]}",
    ),
    "meta": ("whole programs {'prompt': str, 'steps'/'code'/'completions', 'passed': bool}",),
    "eval": (
        "step rows as for train_dataset (-> eval_loss)",
        "candidate groups {'task_id', 'prompt', 'steps'/'code'/'completions', 'passed'} (-> reranked pass@1)",
    ),
}
_PROMPT_NOTE = (
    "'prompt' may be a string or a conversation (list of {'role', 'content'} messages, rendered with the "
    "tokenizer's chat template)."
)


def column_names(dataset: Any) -> list[str]:
    """Columns of a `Dataset`, or of an `IterableDataset`'s first row when its features are unknown."""
    if getattr(dataset, "column_names", None) is not None:
        return list(dataset.column_names)
    return list(next(iter(dataset)).keys())


def _format_error(name: str, role: str, columns: list[str], missing: str) -> ValueError:
    accepted = "\n".join(f"  - {f}" for f in FORMATS[role])
    return ValueError(
        f"{name} has columns {sorted(columns)}; it lacks {missing}. Accepted formats:\n{accepted}\n{_PROMPT_NOTE}"
    )


def label_column(columns: list[str], label_key: str | None, name: str = "train_dataset") -> str:
    """The step-label column: ``label_key`` if set, else ``labels`` then ``mc_labels``; raises naming the column."""
    key = schema_label_key(columns, label_key)
    if key is None:
        missing = f"the step-label column {label_key!r} (FunctionStepPRMConfig.label_key)" if label_key else (
            "a step-label column ('labels' or 'mc_labels')")
        raise _format_error(name, "train", columns, missing)
    return key


def validate_columns(dataset: Any, role: str, name: str, label_key: str | None = None) -> str | None:
    """Check ``dataset``'s columns for ``role`` (train | meta | eval); return the label column (train/eval)."""
    cols = column_names(dataset)
    if not any(c in cols for c in STEP_COLUMNS):
        raise _format_error(name, role, cols, "a program column ('steps', 'code' or 'completions')")
    if role == "train":
        return label_column(cols, label_key, name)
    if role == "meta":
        if VERDICT not in cols:
            raise _format_error(name, role, cols, f"a unit-test verdict column ('{VERDICT}')")
        return None
    key = label_key if label_key in cols else schema_label_key(cols)
    if key is None and not {TASK_ID, VERDICT} <= set(cols):
        raise _format_error(name, role, cols, "step labels ('labels'/'mc_labels') or candidate groups "
                            "('task_id' and 'passed')")
    return key


def _is_conversation(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and isinstance(value[0], dict) and "role" in value[0]


def render_prompt(prompt: Any, tokenizer: Any) -> str:
    """A string prompt as is; a conversation through the tokenizer's chat template (with the generation prompt)."""
    if prompt is None or isinstance(prompt, str):
        return prompt or ""
    if not _is_conversation(prompt):
        raise TypeError(f"prompt must be a string or a list of {{'role', 'content'}} messages, got {prompt!r:.80}.")
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError(
            "A conversational prompt needs a tokenizer with a chat template; pass processing_class with one "
            "(tokenizer.chat_template = ...) or give prompts as strings."
        )
    return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)


def to_step_row(row: dict, tokenizer: Any, label_key: str | None) -> dict:
    """One row in this library's format: string ``prompt``, ``steps`` (from ``completions``), float labels."""
    out = {"prompt": render_prompt(row.get("prompt"), tokenizer)}
    if row.get("steps") is None and row.get("completions") is not None:
        out["steps"] = list(row["completions"])
    if label_key and row.get(label_key) is not None:
        out[label_key] = [None if v is None else float(v) for v in row[label_key]]
    return out


def prepare_dataset(
    dataset: Any, role: str, name: str, tokenizer: Any, label_key: str | None = None
) -> tuple[Any, str | None]:
    """Validate ``dataset`` for ``role`` and convert it to step rows (lazily for an `IterableDataset`).

    Returns the converted dataset and its step-label column (``None`` for meta rows and unlabelled eval rows)."""
    if not isinstance(dataset, (Dataset, IterableDataset)):
        raise TypeError(f"{name} must be a datasets.Dataset or IterableDataset, got {type(dataset).__name__}.")
    key = validate_columns(dataset, role, name, label_key)
    drop = ["completions"] if "completions" in column_names(dataset) else []
    kwargs = {} if isinstance(dataset, IterableDataset) else {"desc": f"Preparing {name}"}
    return dataset.map(lambda row: to_step_row(row, tokenizer, key), remove_columns=drop, **kwargs), key


def materialize(dataset: Any) -> Dataset:
    """An `IterableDataset` read once into a `Dataset` (label tables and meta batches need indexable rows)."""
    if isinstance(dataset, IterableDataset):
        return Dataset.from_list(list(dataset))
    return dataset
