"""`FunctionStepPRMTrainer`: PRM training with bi-level meta label correction, as a `transformers.Trainer`.

The inner problem is ordinary training of `FunctionStepPRM` on step rows whose labels (or weights) come from a
learnable meta table; the outer step, run inside `training_step` on the last micro-batch of an optimizer step,
moves the table so that the one-step-unrolled PRM scores whole programs of the meta set in agreement with their
unit-test verdicts (see `correction`). Everything else (loop, logging, checkpoints, DDP) is the stock Trainer.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from datasets import Dataset, IterableDataset
from transformers import PreTrainedModel, Trainer, TrainerCallback
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_callback import TrainerState
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, sort_checkpoints

from .prm import ChainOfFunctionCollator, FunctionStepPRM, aggregate_scores, step_loss
from .prm.backbones import fit_max_length, load_tokenizer
from .config import META_LEARNING_RATES, FunctionStepPRMConfig
from .correction import (
    FIXED_LABEL_COLUMN,
    LabelTable,
    MetaTable,
    WeightTable,
    build_table,
    darts_hypergradient,
    exact_hypergradient,
    label_loss_grad,
    standardise_hypergradient,
)
from .model_card import build_model_card
from .formats import FORMATS, materialize, prepare_dataset
from .scale import (
    add_adapters, deterministic_train_mode, fp32_parameters, load_training_backbone, prepared_tokenizer, unscaled_grads,
)
from .schema import IGNORE_INDEX

logger = logging.getLogger(__name__)

META_STATE_NAME = "meta_state.pt"
_MODEL_INPUTS = ("input_ids", "attention_mask", "step_positions")


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


class FunctionStepPRMTrainer(Trainer):
    """Train a `FunctionStepPRM` on noisy Monte-Carlo step labels with meta label correction (DreamPRM-Code).

    The arguments follow TRL's trainers (`trl.RewardTrainer`), plus ``meta_dataset``; pass datasets by keyword.

    Args:
        model: a backbone name or path (loaded with ``args.model_init_kwargs``), a transformers `PreTrainedModel`
            backbone, or a `FunctionStepPRM`. Its ``prm_config`` takes ``label_loss``, ``label_smoothing``,
            ``score_aggregation`` and ``max_length`` from ``args`` so that the saved PRM records how it was trained.
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
        self.add_callback(_MetaStateCallback(self))  # the meta table goes into every checkpoint

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
            if "row_id" in train.column_names:
                train = train.remove_columns("row_id")
            train = train.add_column("row_id", list(range(len(train))))
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
        cfg = prm.prm_config
        cfg.loss_type, cfg.label_smoothing = args.label_loss, args.label_smoothing
        cfg.aggregation, cfg.max_length = args.score_aggregation, args.max_length
        return prm, processing_class

    def _check_meta_step_supported(self) -> None:
        if self.is_fsdp_enabled or self.is_deepspeed_enabled:
            backend = "FSDP" if self.is_fsdp_enabled else "DeepSpeed"
            raise ValueError(
                f"meta_method={self.args.meta_method!r} cannot run under {backend}: the meta step perturbs and "
                "differentiates replicated parameters and reads their gradients, which sharded/partitioned "
                "training does not expose. Use DDP (`accelerate launch --multi_gpu`, torchrun) or "
                "meta_method='none'."
            )
        checkpointing = self.args.gradient_checkpointing or getattr(self.args, "activation_checkpointing", False)
        if self.args.hypergradient == "exact" and checkpointing:
            raise ValueError(
                "hypergradient='exact' differentiates through torch.func, which activation checkpointing (and the "
                "input-grad hook PEFT needs with it) does not support; use hypergradient='darts' (checkpointed meta "
                "passes) or gradient_checkpointing=False."
            )
        if self.args.hypergradient == "exact":
            impl = getattr(getattr(self._backbone_body(), "config", None), "_attn_implementation", "eager")
            if impl not in (None, "eager"):
                raise ValueError(
                    f"hypergradient='exact' differentiates twice through attention, which attn_implementation="
                    f"{impl!r} does not support; load the backbone with attn_implementation='eager' or use "
                    "hypergradient='darts'."
                )

    def _backbone_body(self) -> nn.Module:
        backbone = self.accelerator.unwrap_model(self.model).backbone
        return backbone.get_base_model() if hasattr(backbone, "get_base_model") else backbone

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
            if isinstance(self.meta_table, LabelTable):
                return self.meta_table.labels(row_ids, labels).to(labels.dtype), None
            return labels, self.meta_table.weights(row_ids, labels.shape[1])

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
        outputs = model(**{k: inputs[k] for k in _MODEL_INPUTS})
        targets, weights = self._targets(inputs)
        mask = targets != IGNORE_INDEX
        per_step = step_loss(  # in fp32: soft labels such as 0.3 are not bf16 numbers
            outputs.step_logits.float(), targets.float(), mask, self.args.label_loss,
            self.args.label_smoothing, reduction="none",
        )
        if weights is not None:
            per_step = per_step * weights.to(per_step.dtype)
        if num_items_in_batch is not None and model.training:
            denom = torch.as_tensor(num_items_in_batch, device=per_step.device).clamp(min=1)
            loss = per_step.sum() / denom * self.accelerator.num_processes
        else:
            loss = per_step.sum() / mask.sum().clamp(min=1)
        outputs.loss = loss
        return (loss, outputs) if return_outputs else loss

    # ------------------------------------------------------------------------------------------- meta step
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
            if step < args.meta_warmup_steps:  # also with meta_method="none": baselines see the same data
                self._warmup_meta_backward(model)
            elif self.meta_table is not None and (step - args.meta_warmup_steps) % args.meta_interval == 0:
                self.meta_step(model, [self._prepare_inputs(b) for b in window], num_items_in_batch)
        return loss

    def _warmup_meta_backward(self, model: nn.Module) -> None:
        """Warm-up on train ∪ meta (the authors): add the supervised meta-batch loss to this step's gradient."""
        batch = self._meta_batch()
        with self.compute_loss_context_manager():
            logits = model(**{k: batch[k] for k in _MODEL_INPUTS}).step_logits
            loss = self._meta_loss(logits, batch)
        self.accelerator.backward(loss)
        self._meta_logs["meta/warmup_loss"].append(loss.item())

    def _meta_batch(self) -> dict[str, Tensor]:
        """A meta batch that depends only on (seed, step, rank): resuming from a checkpoint replays it exactly."""
        seed = self.args.seed + 7919 * self.state.global_step + 104729 * self.accelerator.process_index
        gen = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(self.meta_dataset), generator=gen)[: self.args.meta_batch_size].tolist()
        batch = self.meta_collator([self.meta_dataset[i] for i in idx])
        if batch["input_ids"].shape[0] == 0:
            raise ValueError(
                f"Every meta row drawn at step {self.state.global_step} was dropped for exceeding "
                f"max_length={self.args.max_length}; raise max_length or remove over-long programs from meta_dataset."
            )
        return self._prepare_inputs(batch)

    def _meta_loss(self, step_logits: Tensor, batch: dict[str, Tensor]) -> Tensor:
        """BCE of the aggregated program score against the unit-test verdict, mean over the meta batch."""
        mask = batch["step_positions"] != IGNORE_INDEX
        keep = mask.any(-1)
        score = aggregate_scores(step_logits[keep], self.args.score_aggregation, mask=mask[keep], logits=True)
        return F.binary_cross_entropy(score.clamp(1e-6, 1 - 1e-6), batch["final_labels"][keep].to(score.dtype))

    def _table_loss(self, step_logits: Tensor, batch: dict[str, Tensor], phi: Tensor, num_items: Tensor) -> Tensor:
        """The inner loss of one micro-batch as a function of the table variable ``phi`` (for ``exact``)."""
        labels, row_ids = batch["step_labels"], batch["row_ids"]
        if isinstance(self.meta_table, LabelTable):
            targets = self.meta_table.labels(row_ids, labels, y=phi)
            weights = None
        else:
            targets, weights = labels, self.meta_table.weights(row_ids, labels.shape[1], w=phi)
        mask = targets != IGNORE_INDEX
        per = step_loss(step_logits, targets.to(step_logits.dtype), mask, self.args.label_loss,
                        self.args.label_smoothing, reduction="none")
        if weights is not None:
            per = per * weights.to(per.dtype)
        return per.sum() / num_items

    def _table_grad(self, step_logits: Tensor, batch: dict[str, Tensor], num_items: Tensor) -> Tensor:
        """``d l / d phi`` of one micro-batch from its step logits alone (closed form, no model backward).

        Labels: ``d loss / d y``; weights: the per-step loss. Zero on fixed (clean) entries and unseen rows.
        """
        table, labels, row_ids = self.meta_table, batch["step_labels"], batch["row_ids"]
        logits = step_logits.detach().float()
        flat, valid = table.index(row_ids, labels.shape[1])
        mask = valid & (labels != IGNORE_INDEX) & table.learnable[flat]
        if isinstance(table, LabelTable):
            per = label_loss_grad(logits, table.y.detach()[flat], self.args.label_loss, self.args.label_smoothing)
        else:
            per = step_loss(logits, labels.float(), None, self.args.label_loss, self.args.label_smoothing,
                            reduction="none")
        grad = torch.zeros_like(table.phi)
        return grad.index_put_((flat[mask],), (per[mask] / num_items).to(grad.dtype), accumulate=True)

    def _build_meta_table(self, train_dataset: Any) -> tuple[MetaTable | None, torch.optim.Optimizer | None]:
        """The meta table over the train labels (clean ``label_fixed`` entries frozen) and its optimizer."""
        args = self.args
        if args.meta_method == "none":
            return None, None
        self._check_meta_split(train_dataset)
        cols = train_dataset.column_names
        fixed = train_dataset[FIXED_LABEL_COLUMN] if FIXED_LABEL_COLUMN in cols else None
        table = build_table(args.meta_method, self.noisy_labels, fixed)
        if table is None:
            return None, None
        self._check_meta_step_supported()
        table.to(args.device)
        lr = args.meta_learning_rate or META_LEARNING_RATES[args.meta_method]
        return table, table.make_optimizer(lr)

    def _check_meta_split(self, train_dataset: Any) -> None:
        """Never the same program in train and meta; with ``meta_split='task'`` never the same problem."""
        meta = self.meta_dataset
        if meta is None or self.args.meta_method == "none":
            return
        both = set(train_dataset.column_names) & set(meta.column_names)
        if self.args.meta_split == "task" and "task_id" in both:
            shared = set(train_dataset["task_id"]) & set(meta["task_id"])
            if shared:
                raise ValueError(
                    f"meta_split='task' needs disjoint problems, but {len(shared)} task ids are in both train and "
                    f"meta sets (e.g. {sorted(shared)[:3]}); split with correction.split_by_task or set "
                    "meta_split='program'."
                )
        if "steps" in both:  # the same program of the same problem (or of any problem, without task ids)
            def keys(ds):
                tasks = ds["task_id"] if "task_id" in both else [""] * len(ds)
                return {(t, "".join(s)) for t, s in zip(tasks, ds["steps"])}

            shared = keys(train_dataset) & keys(meta)
            if shared:
                raise ValueError(
                    f"{len(shared)} programs are both train rows and meta programs; a program's verdict must not "
                    "be judged by itself. Remove them from one of the two sets."
                )

    def meta_step(self, model: nn.Module, window: Sequence[dict[str, Tensor]], num_items: Tensor | None) -> None:
        """One outer update of the meta table from this optimizer step's micro-batches ``window``."""
        phi = self.meta_table.phi
        result = self.compute_hypergradient(model, window, num_items)
        if result is None:  # fp16 loss-scale overflow: the optimizer skips this step as well
            logger.warning("Skipped the meta step at step %d: the inner gradients are not finite (fp16 loss-scale "
                           "overflow).", self.state.global_step)
            return
        hypergrad, meta_loss = result
        seen = (hypergrad != 0) & self.meta_table.learnable
        grad = standardise_hypergradient(hypergrad.to(phi.dtype), seen, self.args.meta_centre_hypergradient)
        if self.args.meta_weight_decay:  # in the standardised units: on the raw ~1e-6 scale it swamped the signal
            grad = grad + self.meta_table.decay_grad(self.args.meta_weight_decay) * seen
        phi.grad = self.meta_table.sparse_grad(grad)  # lazy Adam: rows not in this window keep still
        self.meta_optimizer.step()
        self.meta_optimizer.zero_grad(set_to_none=True)
        self.meta_table.project_()
        self._meta_logs["meta/loss"].append(meta_loss.item())
        self._meta_logs["meta/hypergrad_norm"].append(hypergrad.norm().item())

    def compute_hypergradient(
        self, model: nn.Module, window: Sequence[dict[str, Tensor]], num_items: Tensor | None
    ) -> tuple[Tensor, Tensor] | None:
        """``(d L_meta / d phi, L_meta)`` of the one-step unroll over ``window``, summed/averaged over processes.

        ``darts`` takes the inner gradient from ``.grad`` (left by the plain step, already averaged over processes;
        zeros if absent) and needs one forward+backward on the meta batch plus two forwards per micro-batch.
        ``exact`` recomputes everything through ``torch.func``; under several processes its unrolled step uses
        this process's share of the inner gradient only (an approximation ``darts`` does not make).
        ``None`` when fp16 gradients overflowed (`scale.unscaled_grads`); the meta step is then skipped.
        """
        prm = self.accelerator.unwrap_model(model)
        named = [(n, p) for n, p in prm.named_parameters() if p.requires_grad]
        params = [p for _, p in named]
        if num_items is None:
            num_items = sum((b["step_labels"] != IGNORE_INDEX).sum() for b in window)
        num_items = torch.as_tensor(num_items, device=self.meta_table.phi.device).float().clamp(min=1)
        lr = self.args.meta_inner_learning_rate or (
            self._get_learning_rate() if self.lr_scheduler is not None else self.args.learning_rate
        )
        meta_batch = self._meta_batch()
        world = self.accelerator.num_processes
        # deterministic (no dropout) meta passes that still checkpoint; fp32 so the finite differences are exact
        with deterministic_train_mode(prm), fp32_parameters(prm):
            if self.args.hypergradient == "darts":
                grads = unscaled_grads([p.grad if p.grad is not None else torch.zeros_like(p) for p in params],
                                       self.accelerator.scaler)
                if grads is None:
                    return None

                def meta_grad_fn():
                    with torch.enable_grad():
                        logits = prm(**{k: meta_batch[k] for k in _MODEL_INPUTS}).step_logits
                        loss = self._meta_loss(logits, meta_batch)
                        v = torch.autograd.grad(loss, params, allow_unused=True)
                    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, v)], loss

                @torch.no_grad()
                def table_grad_fn():
                    return sum(
                        self._table_grad(prm(**{k: b[k] for k in _MODEL_INPUTS}).step_logits, b, num_items)
                        for b in window
                    )

                def reduce_fn(v):
                    return [self.accelerator.reduce(t, "mean") for t in v] if world > 1 else v

                hypergrad, meta_loss = darts_hypergradient(
                    params, grads, lr, meta_grad_fn, table_grad_fn, self.args.darts_alpha, reduce_fn
                )
            else:
                hypergrad, meta_loss = self._exact(prm, named, window, meta_batch, num_items, lr)
        if world > 1:
            hypergrad = self.accelerator.reduce(hypergrad.contiguous(), "sum")
            meta_loss = self.accelerator.reduce(meta_loss.detach().reshape(1), "mean")[0]
        if not torch.isfinite(hypergrad).all():
            raise FloatingPointError(
                f"Non-finite meta gradient at step {self.state.global_step}; lower meta_learning_rate or darts_alpha."
            )
        return hypergrad, meta_loss

    def _exact(self, prm, named, window, meta_batch, num_items, lr) -> tuple[Tensor, Tensor]:
        """Second-order hypergradient through ``torch.func.functional_call`` (this process's window)."""
        theta = {n: p for n, p in named}

        def logits(params, batch):
            return torch.func.functional_call(
                prm, params, args=(), kwargs={k: batch[k] for k in _MODEL_INPUTS}, strict=False
            ).step_logits

        def inner_loss(params, phi):
            return sum(self._table_loss(logits(params, b), b, phi, num_items) for b in window)

        def meta_loss(params):
            return self._meta_loss(logits(params, meta_batch), meta_batch)

        with torch.enable_grad():
            return exact_hypergradient(inner_loss, meta_loss, theta, self.meta_table.phi, lr)

    # ------------------------------------------------------------------------------------------- results
    def corrected_labels(self) -> list[list[float | None]]:
        """Current corrected labels ``y_hat`` of every train row, aligned with its step labels (list of lists).

        With ``sample_reweighting`` or ``none`` the labels are not changed and the noisy labels are returned.
        """
        if isinstance(self.meta_table, LabelTable):
            return self.meta_table.corrected()
        return [list(r) for r in self.noisy_labels]

    def sample_weights(self) -> list[list[float | None]] | None:
        """Current weight of every train prefix (``sample_reweighting``: one per step label, in [0, 2], clean
        verdicts fixed at 1), aligned with the rows' step labels; ``None`` for the other methods."""
        if isinstance(self.meta_table, WeightTable):
            return self.meta_table.row_weights()
        return None

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
        ``score_aggregation``; `metrics.rerank_metrics` gives reranked pass@1 (PRM pick), mean pass@1 (random
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
        has_labels = bool({self.label_key, "labels", "mc_labels"} & cols)
        has_groups = {"task_id", "passed"} <= cols
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
        """Score every candidate of ``dataset`` (sharded over processes) and compute `metrics.rerank_metrics`."""
        from accelerate.utils import gather_object

        from .evaluation.metrics import rerank_metrics

        prm = self.accelerator.unwrap_model(self.model)
        rank, world = self.accelerator.process_index, self.accelerator.num_processes
        mine = list(range(rank, len(dataset), world))
        rows = [dataset[i] for i in mine]
        pairs = [(r.get("prompt") or "", r["steps"] if r.get("steps") is not None else r["code"]) for r in rows]
        scores = prm.program_scores(pairs, self.args.score_aggregation, self.args.per_device_eval_batch_size,
                                    progress=self.is_local_process_zero() and not self.args.disable_tqdm)
        local = list(zip(mine, scores))
        by_index = dict(gather_object(local) if world > 1 else local)
        groups: dict[Any, tuple[list[float], list[bool]]] = {}
        for i, (task, passed) in enumerate(zip(dataset["task_id"], dataset["passed"])):
            score = by_index[i]
            s, p = groups.setdefault(task, ([], []))
            s.append(score)
            p.append(bool(passed))
        out = rerank_metrics([g[0] for g in groups.values()], [g[1] for g in groups.values()])
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
        if _resume_wanted(resume_from_checkpoint):
            resume_from_checkpoint = last_complete_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None and not from_args:
                raise ValueError(
                    f"No complete checkpoint in output_dir {self.args.output_dir!r} to resume from; train without "
                    "resume_from_checkpoint, or pass a checkpoint path."
                )
            if resume_from_checkpoint is None:
                logger.info("No complete checkpoint in %s yet: training from the start.", self.args.output_dir)
        if resume_from_checkpoint:
            self.load_meta_state(str(resume_from_checkpoint))  # the model itself comes back through Trainer.train
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    # The model is saved and restored by the stock Trainer (`FunctionStepPRM.save_pretrained`; on resume the trained
    # weights come back from ``model.safetensors``). Only the meta table is this trainer's own state: a callback
    # writes it into each checkpoint, and `train` reads it back before resuming.
    def save_meta_state(self, directory: str) -> None:
        """Write the meta table and its Adam state to ``directory/meta_state.pt`` (no-op without a meta table)."""
        if self.meta_table is None or not self.args.should_save:
            return
        os.makedirs(directory, exist_ok=True)
        torch.save(
            {
                "kind": self.meta_table.kind,
                "num_rows": len(self.noisy_labels),
                "table": {k: v.cpu() for k, v in self.meta_table.state_dict().items()},
                "optimizer": self.meta_optimizer.state_dict(),
            },
            os.path.join(directory, META_STATE_NAME),
        )

    def load_meta_state(self, checkpoint: str) -> None:
        """Restore the meta table and its Adam state from a checkpoint written during training."""
        if self.meta_table is None:
            return
        path = os.path.join(checkpoint, META_STATE_NAME)
        if not os.path.isfile(path):
            raise ValueError(
                f"{checkpoint!r} has no {META_STATE_NAME} but meta_method={self.args.meta_method!r}; "
                "resume with the meta_method the checkpoint was trained with."
            )
        state = torch.load(path, map_location=self.args.device, weights_only=True)
        if state["kind"] != self.meta_table.kind or state["num_rows"] != len(self.noisy_labels):
            raise ValueError(
                f"{path} is a {state['kind']} table over {state['num_rows']} rows; this run has "
                f"{self.meta_table.kind} over {len(self.noisy_labels)} rows. Resume with the same train_dataset "
                "and meta_method."
            )
        self.meta_table.load_state_dict(state["table"])
        self.meta_optimizer.load_state_dict(state["optimizer"])

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


class _MetaStateCallback(TrainerCallback):
    """Writes the trainer's meta table into every checkpoint folder the stock Trainer saves."""

    def __init__(self, trainer: FunctionStepPRMTrainer):
        self.trainer = trainer

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.trainer.save_meta_state(os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"))
