"""Checkpoints of a meta-learning run: which checkpoint to resume from, and the meta table's own state.

The model, its optimizer and the trainer state are saved and restored by the stock `transformers.Trainer`
(`FunctionStepPRM.save_pretrained`; on resume the trained weights come back from ``model.safetensors``). Only the
meta table and its optimizer are this trainer's own state: `MetaStateCallback` writes them into each checkpoint as
``meta_state.pt``, and `load_meta_state` reads them back before resuming.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_callback import TrainerState
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, sort_checkpoints

from .meta_methods import MetaTable

logger = logging.getLogger(__name__)

META_STATE_NAME = "meta_state.pt"


def last_complete_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The newest ``checkpoint-N`` in ``output_dir`` that a save finished, or None.

    The Trainer writes ``trainer_state.json`` last, so a checkpoint without a readable one was cut short (the
    process was killed during the save) and is skipped with a warning.
    """
    if not os.path.isdir(output_dir):
        return None
    for path in reversed(sort_checkpoints(str(output_dir), PREFIX_CHECKPOINT_DIR)):
        try:
            TrainerState.load_from_json(os.path.join(path, TRAINER_STATE_NAME))
        except (OSError, ValueError, TypeError):
            logger.warning("Skipping %s: it has no readable trainer_state.json (its save did not finish).", path)
            continue
        return path
    return None


def _resume_wanted(value: Any) -> bool:
    """Whether a ``resume_from_checkpoint`` value means "the last checkpoint" (True, "true" or "last")."""
    return value is True or (isinstance(value, str) and value.lower() in ("true", "last"))


def resolve_resume(value: str | bool | None, output_dir: str, from_args: bool) -> str | bool | None:
    """The checkpoint ``Trainer.train`` should resume from: a path as given; True/``"true"``/``"last"`` the last
    complete checkpoint of ``output_dir``. With none there, an error when asked for in code, a fresh start (None)
    when ``from_args`` (``--resume_from_checkpoint last`` on a first run)."""
    if not _resume_wanted(value):
        return value
    path = last_complete_checkpoint(output_dir)
    if path is None and not from_args:
        raise ValueError(
            f"No complete checkpoint in output_dir {output_dir!r} to resume from; train without "
            "resume_from_checkpoint, or pass a checkpoint path."
        )
    if path is None:
        logger.info("No complete checkpoint in %s yet: training from the start.", output_dir)
    return path


def save_meta_state(directory: str, table: MetaTable, optimizer: torch.optim.Optimizer, num_rows: int) -> None:
    """Write ``table`` and its optimizer state to ``directory/meta_state.pt``."""
    os.makedirs(directory, exist_ok=True)
    torch.save(
        {
            "kind": table.kind,
            "num_rows": num_rows,
            "table": {k: v.cpu() for k, v in table.state_dict().items()},
            "optimizer": optimizer.state_dict(),
        },
        os.path.join(directory, META_STATE_NAME),
    )


def load_meta_state(
    checkpoint: str, table: MetaTable, optimizer: torch.optim.Optimizer, num_rows: int, device: Any
) -> None:
    """Restore ``table`` and its optimizer from ``checkpoint``, checking it is the same method over as many rows."""
    path = os.path.join(checkpoint, META_STATE_NAME)
    if not os.path.isfile(path):
        raise ValueError(
            f"{checkpoint!r} has no {META_STATE_NAME} but meta_method={table.kind!r}; "
            "resume with the meta_method the checkpoint was trained with."
        )
    state = torch.load(path, map_location=device, weights_only=True)
    if state["kind"] != table.kind or state["num_rows"] != num_rows:
        raise ValueError(
            f"{path} is a {state['kind']} table over {state['num_rows']} rows; this run has "
            f"{table.kind} over {num_rows} rows. Resume with the same train_dataset and meta_method."
        )
    own = table.state_dict()
    saved = {k: v for k, v in state["table"].items() if k in own and v.shape == own[k].shape}
    essential = set(own) - set(table.restartable)
    if essential - set(saved):
        raise ValueError(
            f"{path} lacks {sorted(essential - set(saved))} of this {table.kind} table (or has another shape): it was "
            "written by another version of dreamprm_trl. Resume with that version, or train from the start."
        )
    restart = sorted(set(own) - set(saved))
    if restart or len(saved) < len(state["table"]):  # running statistics of another version: restart from zero
        logger.warning("%s predates %s of this version: they restart from zero (ignored: %s).", path, restart,
                       sorted(set(state["table"]) - set(saved)))
    table.load_state_dict({**{k: torch.zeros_like(own[k]) for k in restart}, **saved})
    optimizer.load_state_dict(state["optimizer"])


class MetaStateCallback(TrainerCallback):
    """Writes the trainer's meta table into every checkpoint folder the stock Trainer saves."""

    def __init__(self, trainer: Any):
        self.trainer = trainer

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.trainer.save_meta_state(os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"))
