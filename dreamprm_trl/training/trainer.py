"""`FunctionStepPRMTrainer`: PRM training with bi-level meta label correction, as a `transformers.Trainer`.

The inner problem is ordinary training of `FunctionStepPRM` on step rows whose labels (or weights) come from a
learnable meta table; the outer step, run inside `training_step` on the last micro-batch of an optimizer step,
moves the table so that the one-step-unrolled PRM scores whole programs of the meta set in agreement with their
unit-test verdicts. This file holds construction and the Trainer hooks; the meta step is `meta_step.MetaStepMixin`,
the meta methods `meta_methods`, checkpoints of the table `checkpoints`. Everything else (loop, logging,
checkpoints, DDP) is the stock Trainer.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from datasets import Dataset, IterableDataset
from transformers import PreTrainedModel, Trainer, TrainerCallback

from ..prm import ChainOfFunctionCollator, FunctionStepPRM
from ..prm.backbones import fit_max_length, load_tokenizer
from ..schema import CODE, IGNORE_INDEX, LABEL_COLUMNS, PROMPT, ROW_ID, STEPS, TASK_ID, VERDICT, group_by_task
from .checkpoints import MetaStateCallback, load_meta_state, resolve_resume, save_meta_state
from .config import FunctionStepPRMConfig
from .formats import FORMATS, materialize, prepare_dataset
from .meta_methods import weighted_step_loss
from .meta_step import MODEL_INPUTS, MetaStepMixin
from .model_card import build_model_card
from .scale import add_adapters, load_training_backbone, prepared_tokenizer

logger = logging.getLogger(__name__)


class FunctionStepPRMTrainer(MetaStepMixin, Trainer):
    """Train a `FunctionStepPRM` on noisy Monte-Carlo step labels with meta label correction (DreamPRM-Code).

    The arguments follow TRL's trainers (`trl.RewardTrainer`), plus ``meta_dataset``; pass datasets by keyword.

    Args:
        model: a backbone name or path (loaded with ``args.model_init_kwargs``), a transformers `PreTrainedModel`
            backbone, or a `FunctionStepPRM`. Its ``prm_config`` takes the shared fields (``loss_type``,
            ``label_smoothing``, ``aggregation``, ``max_length``) from ``args`` so that the saved PRM records how it was trained.
        args: a `FunctionStepPRMConfig`.
        data_collator: defaults to `ChainOfFunctionCollator`.
        train_dataset: step rows or TRL ``stepwise_supervision`` rows (`formats.FORMATS`); a `Dataset` or an
            `IterableDataset` (read once into a `Dataset` when a meta method needs its label table).
        eval_dataset: step rows (-> ``eval_loss``) and/or candidate groups ``{"task_id", "prompt", "steps"|"code",
            "passed"}`` (-> reranked pass@1 and friends); a dataset or a dict of them.
        processing_class: the tokenizer; a base tokenizer gets the step token (on a copy). Defaults to the
            model's.
        compute_metrics, callbacks, optimizers, optimizer_cls_and_kwargs, preprocess_logits_for_metrics: as for
            `transformers.Trainer`.
        quantization_config: a `BitsAndBytesConfig` for a ``model`` given by name (QLoRA with ``peft_config``).
        peft_config: a `peft.PeftConfig` wrapping the backbone (default: ``args.lora_config()`` for a new PRM).
        meta_dataset: whole programs ``{"prompt", "steps", "passed"}`` with clean unit-test verdicts
            (required unless ``args.meta_method == "none"``).

    Columns of every dataset are validated here, with an error naming the missing column and the accepted formats.
    """

    _tag_names = ["dreamprm-code", "process-reward-model", "prm", "code", "trl"]
    # compute_loss normalises by the valid steps of the whole accumulation window across processes.
    loss_is_scaled_for_ga = True

    def __init__(
        self,
        model: FunctionStepPRM | PreTrainedModel | str,
        args: FunctionStepPRMConfig | None = None,
        data_collator: Callable | None = None,
        train_dataset: Dataset | IterableDataset | None = None,
        eval_dataset: Any = None,
        processing_class: Any = None,
        compute_metrics: Callable | None = None,
        callbacks: list[TrainerCallback] | None = None,
        optimizers: tuple = (None, None),
        optimizer_cls_and_kwargs: tuple | None = None,
        preprocess_logits_for_metrics: Callable | None = None,
        quantization_config: Any = None,
        peft_config: Any = None,
        meta_dataset: Dataset | IterableDataset | None = None,
    ):
        args = self._check_args(args, data_collator, train_dataset)
        model, processing_class = self._build_model(model, args, processing_class, peft_config, quantization_config)
        train_dataset, meta_dataset, eval_dataset = self._prepare_datasets(
            args, processing_class, train_dataset, meta_dataset, eval_dataset
        )
        if data_collator is None:
            data_collator = ChainOfFunctionCollator(processing_class, args.max_length, args.step_token, self.label_key)
        if args.label_names is None:
            args.label_names = ["step_labels"]

        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            compute_metrics=compute_metrics,
            callbacks=callbacks,
            optimizers=optimizers,
            optimizer_cls_and_kwargs=optimizer_cls_and_kwargs,
            preprocess_logits_for_metrics=preprocess_logits_for_metrics,
        )
        self.model_accepts_loss_kwargs = False  # the loss is computed here, not by the model
        self.meta_dataset = meta_dataset
        self.meta_collator = ChainOfFunctionCollator(processing_class, args.max_length, args.step_token)
        self.meta_table, self.meta_optimizer = self._build_meta_table(train_dataset)
        self._window: list[dict[str, Tensor]] = []
        self._meta_logs: dict[str, list[float]] = defaultdict(list)
        self.add_callback(MetaStateCallback(self))  # the meta table goes into every checkpoint

    # ------------------------------------------------------------------------------------------- construction
    @staticmethod
    def _check_args(args: Any, data_collator: Any, train_dataset: Any) -> FunctionStepPRMConfig:
        if args is None:
            args = FunctionStepPRMConfig(output_dir="prm-output")
        elif not isinstance(args, FunctionStepPRMConfig):
            raise TypeError(
                f"args must be a FunctionStepPRMConfig, got {type(args).__name__}; build one with "
                "FunctionStepPRMConfig(output_dir=..., ...) (it accepts every TrainingArguments field)."
            )
        if isinstance(data_collator, (Dataset, IterableDataset)):
            raise TypeError(
                "data_collator is a dataset: the arguments follow TRL's order (model, args, data_collator, "
                "train_dataset, eval_dataset, processing_class, ..., peft_config, meta_dataset); pass the datasets "
                "by keyword: FunctionStepPRMTrainer(model, args, train_dataset=..., meta_dataset=...)."
            )
        if train_dataset is None:
            raise ValueError("train_dataset is required: " + "; or ".join(FORMATS["train"]) + ".")
        if args.meta_method == "none" and isinstance(train_dataset, IterableDataset):
            args.accelerator_config.dispatch_batches = False  # as TRL: batches of a stream cannot be concatenated
        return args

    def _prepare_datasets(
        self, args: FunctionStepPRMConfig, tokenizer: Any, train: Any, meta: Any, evaluation: Any
    ) -> tuple[Any, Any, Any]:
        """Validate every dataset's columns now (not at the first batch) and convert them to step rows.

        The label table needs one entry per train row, so with a meta method a streamed train set is read once.
        """
        if args.meta_method != "none" and meta is None:
            raise ValueError(
                f"meta_method={args.meta_method!r} needs meta_dataset: " + "; ".join(FORMATS["meta"])
                + ". Pass one or set meta_method='none'."
            )
        train, self.label_key = prepare_dataset(train, "train", "train_dataset", tokenizer, args.label_key)
        if args.meta_method != "none":
            train = materialize(train)
        if isinstance(train, Dataset):
            self.noisy_labels: list[list[float | None]] = [list(r) for r in train[self.label_key]]
            if ROW_ID in train.column_names:
                train = train.remove_columns(ROW_ID)
            train = train.add_column(ROW_ID, list(range(len(train))))
        else:
            self.noisy_labels = []  # a stream without label correction: rows are never indexed
        if meta is not None:
            meta = materialize(prepare_dataset(meta, "meta", "meta_dataset", tokenizer)[0])
        return train, meta, self._prepare_eval(evaluation, tokenizer)

    def _prepare_eval(self, evaluation: Any, tokenizer: Any, name: str = "eval_dataset") -> Any:
        """An eval dataset (or a dict of them) validated and converted to step rows, in memory."""
        if isinstance(evaluation, dict):
            return {k: self._prepare_eval(v, tokenizer, f"{name}[{k!r}]") for k, v in evaluation.items()}
        if evaluation is None:
            return None
        return materialize(prepare_dataset(evaluation, "eval", name, tokenizer, self.label_key)[0])

    @staticmethod
    def _build_model(
        model: Any, args: FunctionStepPRMConfig, processing_class: Any, peft_config: Any,
        quantization_config: Any = None,
    ) -> tuple[FunctionStepPRM, Any]:
        """The PRM and its (prepared) tokenizer from a name/path, a transformers backbone or a `FunctionStepPRM`.

        ``peft_config`` (default: the config's ``lora_*`` fields) wraps a new backbone, or a PRM without adapters.
        A base ``processing_class`` gets the step token (on a copy); a backbone's embeddings are resized.
        """
        if isinstance(model, str):
            if processing_class is None:
                processing_class = load_tokenizer(model)
            model = load_training_backbone(model, args, quantization_config)
        elif args.model_init_kwargs or quantization_config is not None:
            logger.warning("model is already instantiated: model_init_kwargs and quantization_config are ignored.")
        if isinstance(model, FunctionStepPRM):
            prm = model
            if peft_config is not None:
                add_adapters(prm, peft_config)
            processing_class = prepared_tokenizer(prm, processing_class)
        elif isinstance(model, PreTrainedModel):
            prm = FunctionStepPRM.from_backbone(
                model, processing_class, lora_config=peft_config if peft_config is not None else args.lora_config(),
                step_token=args.step_token, max_length=args.max_length, seed=args.seed,
            )  # head, LoRA and new token rows drawn from args.seed alone
            processing_class = prm.tokenizer
        else:
            raise TypeError(
                f"model must be a backbone name/path, a transformers PreTrainedModel or a FunctionStepPRM, got "
                f"{type(model).__name__}."
            )
        if prm.prm_config.step_token != args.step_token:
            raise ValueError(
                f"The PRM uses step_token={prm.prm_config.step_token!r} but args.step_token={args.step_token!r}; "
                "set FunctionStepPRMConfig.step_token to the PRM's."
            )
        args.max_length = fit_max_length(prm.backbone, args.max_length)
        for name, value in args.prm_fields().items():
            setattr(prm.prm_config, name, value)
        return prm, processing_class

    # ------------------------------------------------------------------------------------------- loss
    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device) -> Tensor | None:
        """Valid steps in the whole accumulation window, summed over processes (the loss denominator)."""
        if not batch_samples or "step_labels" not in batch_samples[0]:
            return None
        count = sum((b["step_labels"] != IGNORE_INDEX).sum() for b in batch_samples).to(device)
        if self.accelerator.num_processes > 1:
            count = self.accelerator.gather(count.reshape(1)).sum()
        return count

    def _targets(self, inputs: dict[str, Tensor]) -> tuple[Tensor, Tensor | None]:
        """Step targets (corrected labels when label correction runs) and per-row weights (reweighting)."""
        labels, row_ids = inputs["step_labels"], inputs.get("row_ids")
        if row_ids is None or self.meta_table is None or not self.model.training:
            return labels, None
        with torch.no_grad():
            return self.meta_table.targets(row_ids, labels)

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Tensor],
        return_outputs: bool = False,
        num_items_in_batch: Tensor | int | None = None,
    ) -> Tensor | tuple[Tensor, Any]:
        """Sum of per-step losses over ``num_items_in_batch`` valid steps of the accumulation window and processes.

        Multiplying by the number of processes undoes DDP's gradient averaging, so the update equals that of one
        process holding the whole global batch; ``loss_is_scaled_for_ga = True`` stops the Trainer dividing again.
        Outside training (or without a count) it is the mean over this batch's valid steps.
        """
        outputs = model(**{k: inputs[k] for k in MODEL_INPUTS})
        targets, weights = self._targets(inputs)
        per_step, mask = weighted_step_loss(  # in fp32: soft labels such as 0.3 are not bf16 numbers
            outputs.step_logits.float(), targets, weights, self.args.loss_type, self.args.label_smoothing
        )
        if num_items_in_batch is not None and model.training:
            denom = torch.as_tensor(num_items_in_batch, device=per_step.device).clamp(min=1)
            loss = per_step.sum() / denom * self.accelerator.num_processes
        else:
            loss = per_step.sum() / mask.sum().clamp(min=1)
        outputs.loss = loss
        return (loss, outputs) if return_outputs else loss

    # ------------------------------------------------------------------------------------------- training step
    def training_step(
        self, model: nn.Module, inputs: dict[str, Tensor], num_items_in_batch: Tensor | int | None = None
    ) -> Tensor:
        """The plain step; on the last micro-batch of an optimizer step also the meta update (when due)."""
        if self.meta_table is not None:
            self._window.append(inputs)
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.meta_dataset is not None and self.accelerator.sync_gradients:
            window, self._window = self._window, []
            step, args = self.state.global_step, self.args  # optimizer steps completed before this one
            warmup = args.meta_warmup(self.state.max_steps)
            if step < warmup:  # also with meta_method="none": baselines see the same data
                self._warmup_meta_backward(model)
            elif self.meta_table is not None and (step - warmup) % args.meta_interval == 0:
                self.meta_step(model, [self._prepare_inputs(b) for b in window], num_items_in_batch)
        return loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Adds meta loss, label shift (mean |y_hat - y|), labels crossing 0.5 and weight stats to training logs."""
        if "loss" in logs:
            for key, values in self._meta_logs.items():
                if values:
                    logs[key] = sum(values) / len(values)
            self._meta_logs.clear()
            if self.meta_table is not None:
                logs.update(self.meta_table.state_summary())
        super().log(logs, start_time)

    # ------------------------------------------------------------------------------------------- evaluation
    def evaluate(
        self, eval_dataset: Any = None, ignore_keys: list[str] | None = None, metric_key_prefix: str = "eval"
    ) -> dict[str, float]:
        """``eval_loss`` on rows with step labels, and reranking metrics on candidate groups.

        Rows ``{"task_id", "prompt", "steps"|"code", "passed"}`` (one per candidate) are scored with
        ``aggregation``; `evaluation.metrics.rerank_metrics` gives reranked pass@1 (PRM pick), mean pass@1 (random
        pick), oracle pass@N and bootstrap CIs, logged as ``{prefix}_reranked_pass@1`` etc.
        """
        dataset = self._prepare_eval(eval_dataset, self.processing_class) if eval_dataset is not None \
            else self.eval_dataset
        if isinstance(dataset, dict):
            out: dict[str, float] = {}
            for name, ds in dataset.items():
                out.update(self.evaluate(ds, ignore_keys, f"{metric_key_prefix}_{name}"))
            return out
        if dataset is None:
            raise ValueError("evaluate() needs an eval_dataset (here or in the constructor).")
        cols = set(dataset.column_names)
        has_labels = bool({self.label_key, *LABEL_COLUMNS} & cols)
        has_groups = {TASK_ID, VERDICT} <= cols
        if not (has_labels or has_groups):
            raise ValueError(
                f"eval_dataset has columns {sorted(cols)}; it needs step labels ({self.label_key!r}) for eval_loss "
                "and/or candidate groups ('task_id', 'passed' and 'steps' or 'code') for reranking metrics."
            )
        metrics = super().evaluate(dataset, ignore_keys, metric_key_prefix) if has_labels else {}
        if has_groups:
            rerank = {f"{metric_key_prefix}_{k}": v for k, v in self.rerank_metrics(dataset).items()}
            self.log(rerank)
            self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, rerank)
            metrics.update(rerank)
        return metrics

    def rerank_metrics(self, dataset: Any) -> dict[str, float]:
        """Score every candidate of ``dataset`` (sharded over processes) and compute `evaluation.metrics.rerank_metrics`."""
        from accelerate.utils import gather_object

        from ..evaluation.metrics import rerank_metrics

        prm = self.accelerator.unwrap_model(self.model)
        rank, world = self.accelerator.process_index, self.accelerator.num_processes
        mine = list(range(rank, len(dataset), world))
        rows = [dataset[i] for i in mine]
        pairs = [(r.get(PROMPT) or "", r[STEPS] if r.get(STEPS) is not None else r[CODE]) for r in rows]
        scores = prm.program_scores(pairs, self.args.aggregation, self.args.per_device_eval_batch_size,
                                    progress=self.is_local_process_zero() and not self.args.disable_tqdm)
        local = list(zip(mine, scores))
        by_index = dict(gather_object(local) if world > 1 else local)
        passed = [bool(p) for p in dataset[VERDICT]]
        groups = group_by_task(dataset[TASK_ID], [by_index[i] for i in range(len(dataset))], passed).values()
        out = rerank_metrics([s for s, _ in groups], [p for _, p in groups])
        return {k: float(v) for k, v in out.items() if isinstance(v, (int, float))}

    # ------------------------------------------------------------------------------------------- checkpoints
    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any) -> Any:
        """`Trainer.train`, where resuming restores the meta table too, and "the last checkpoint" skips checkpoints
        whose save never finished.

        ``resume_from_checkpoint`` is a checkpoint path, or True (also ``"true"``/``"last"``) for the last
        complete checkpoint of ``output_dir`` (a ``ValueError`` if there is none). When it is None,
        ``args.resume_from_checkpoint`` is used, so ``--resume_from_checkpoint PATH|last`` works from a
        script's command line; ``last`` there starts afresh when ``output_dir`` has no complete checkpoint yet.
        """
        from_args = resume_from_checkpoint is None
        if from_args:
            resume_from_checkpoint = self.args.resume_from_checkpoint
        resume_from_checkpoint = resolve_resume(resume_from_checkpoint, self.args.output_dir, from_args)
        if resume_from_checkpoint:
            self.load_meta_state(str(resume_from_checkpoint))  # the model itself comes back through Trainer.train
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    # Only the meta table is this trainer's own state (see `checkpoints`): a callback writes it into each
    # checkpoint, and `train` reads it back before resuming.
    def save_meta_state(self, directory: str) -> None:
        """Write the meta table and its Adam state to ``directory/meta_state.pt`` (no-op without a meta table)."""
        if self.meta_table is not None and self.args.should_save:
            save_meta_state(directory, self.meta_table, self.meta_optimizer, len(self.noisy_labels))

    def load_meta_state(self, checkpoint: str) -> None:
        """Restore the meta table and its Adam state from a checkpoint written during training."""
        if self.meta_table is not None:
            load_meta_state(checkpoint, self.meta_table, self.meta_optimizer, len(self.noisy_labels), self.args.device)

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        """As TRL's trainers: refresh the model card in ``output_dir``, then the stock checkpoint."""
        model_name = Path(self.args.output_dir).name if self.args.hub_model_id is None else (
            self.args.hub_model_id.split("/")[-1])
        self.create_model_card(model_name=model_name)
        super()._save_checkpoint(model, trial)

    # ------------------------------------------------------------------------------------------- model card
    def create_model_card(
        self,
        model_name: str | None = None,
        dataset_name: str | list[str] | None = None,
        tags: str | list[str] | None = None,
        output_dir: str | None = None,
        **kwargs: Any,
    ) -> None:
        """Write ``README.md`` (a `huggingface_hub.ModelCard` from ``model_cards/prm_model_card.md``) into
        ``output_dir`` (default ``args.output_dir``), as TRL's trainers do."""
        if not self.is_world_process_zero():
            return
        output_dir = output_dir or self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        card = build_model_card(self, model_name=model_name, dataset_name=dataset_name, tags=tags)
        card.save(os.path.join(output_dir, "README.md"))
