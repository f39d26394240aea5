"""`FunctionStepPRMTrainer`: PRM training with bi-level meta label correction, as a `transformers.Trainer`.

The inner problem is ordinary training of `FunctionStepPRM` on step rows whose labels (or weights) come from a
learnable meta table; the outer step, run inside `training_step` on the last micro-batch of an optimizer step,
moves the table so that the one-step-unrolled PRM scores whole programs of the meta set in agreement with their
unit-test verdicts (see `correction`). Everything else (loop, logging, checkpoints, DDP) is the stock Trainer.
"""

from __future__ import annotations

import logging
import os
import string
from collections import defaultdict
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .collator import IGNORE_INDEX, ChainOfFunctionCollator
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
from .modeling import FunctionStepPRM, aggregate_scores, fit_max_length, step_loss

logger = logging.getLogger(__name__)

META_STATE_NAME = "meta_state.pt"
TRAINABLE_STATE_NAME = "trainable_state.safetensors"
MODEL_CARD_TEMPLATE = "prm_model_card.md"
_MODEL_INPUTS = ("input_ids", "attention_mask", "step_positions")


def _label_column(dataset: Any, label_key: str | None) -> str:
    cols = dataset.column_names
    key = label_key or next((k for k in ("labels", "mc_labels") if k in cols), None)
    if key is None or key not in cols:
        raise ValueError(
            f"train_dataset has no step-label column ({label_key or 'labels/mc_labels'}); its columns are {cols}. "
            "Pass rows {'prompt', 'steps', 'mc_labels'} or set FunctionStepPRMConfig.label_key."
        )
    return key


class FunctionStepPRMTrainer(Trainer):
    """Train a `FunctionStepPRM` on noisy Monte-Carlo step labels with meta label correction (DreamPRM-Code).

    Args:
        model: a `FunctionStepPRM`, or a backbone name/path (wrapped with LoRA from ``peft_config`` or the config).
            Its ``prm_config`` takes ``label_loss``, ``label_smoothing``, ``score_aggregation`` and ``max_length``
            from ``args`` so that the saved PRM records how it was trained.
        args: a `FunctionStepPRMConfig`.
        train_dataset: step rows ``{"prompt", "steps", "mc_labels"}`` (one soft label in [0, 1] per step).
        meta_dataset: whole programs ``{"prompt", "steps", "passed"}`` with clean unit-test verdicts
            (required unless ``args.meta_method == "none"``).
        eval_dataset: candidate groups ``{"task_id", "prompt", "steps"|"code", "passed"}`` (one row per candidate)
            -> reranked pass@1 and friends; rows with step labels also give ``eval_loss``.
        processing_class: the tokenizer; defaults to ``model.tokenizer``.
        peft_config: a `peft.LoraConfig` used when ``model`` is a name/path.
        data_collator: defaults to `ChainOfFunctionCollator`.
        callbacks, optimizers, **kwargs: as for `transformers.Trainer`.
    """

    _tag_names = ["dreamprm-code", "process-reward-model", "prm", "code", "trl"]
    # compute_loss normalises by the valid steps of the whole accumulation window across processes.
    loss_is_scaled_for_ga = True

    def __init__(
        self,
        model: FunctionStepPRM | str,
        args: FunctionStepPRMConfig | None = None,
        train_dataset: Any = None,
        meta_dataset: Any = None,
        eval_dataset: Any = None,
        processing_class: Any = None,
        peft_config: Any = None,
        data_collator: Callable | None = None,
        callbacks: list[TrainerCallback] | None = None,
        optimizers: tuple = (None, None),
        **kwargs: Any,
    ):
        if args is None:
            args = FunctionStepPRMConfig(output_dir="prm-output")
        elif not isinstance(args, FunctionStepPRMConfig):
            raise TypeError(
                f"args must be a FunctionStepPRMConfig, got {type(args).__name__}; build one with "
                "FunctionStepPRMConfig(output_dir=..., ...) (it accepts every TrainingArguments field)."
            )
        model = self._build_model(model, args, peft_config)
        if train_dataset is None:
            raise ValueError("train_dataset is required: step rows {'prompt', 'steps', 'mc_labels'}.")
        if args.meta_method != "none" and meta_dataset is None:
            raise ValueError(
                f"meta_method={args.meta_method!r} needs meta_dataset (whole programs {{'prompt', 'steps', "
                "'passed'}); pass one or set meta_method='none'."
            )
        if meta_dataset is not None and not {"passed", "final_label"} & set(meta_dataset.column_names):
            raise ValueError(f"meta_dataset needs a 'passed' column; it has {meta_dataset.column_names}.")
        processing_class = processing_class if processing_class is not None else model.tokenizer
        self.label_key = _label_column(train_dataset, args.label_key)
        self.noisy_labels: list[list[float | None]] = [list(r) for r in train_dataset[self.label_key]]
        if "row_id" in train_dataset.column_names:
            train_dataset = train_dataset.remove_columns("row_id")
        train_dataset = train_dataset.add_column("row_id", list(range(len(train_dataset))))
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
            callbacks=callbacks,
            optimizers=optimizers,
            **kwargs,
        )
        self.model_accepts_loss_kwargs = False  # the loss is computed here, not by the model
        self.meta_dataset = meta_dataset
        self.meta_collator = ChainOfFunctionCollator(processing_class, args.max_length, args.step_token)
        self.meta_table, self.meta_optimizer = self._build_meta_table(train_dataset)
        self._window: list[dict[str, Tensor]] = []
        self._meta_logs: dict[str, list[float]] = defaultdict(list)

    # ------------------------------------------------------------------------------------------- construction
    @staticmethod
    def _build_model(model: Any, args: FunctionStepPRMConfig, peft_config: Any) -> FunctionStepPRM:
        if isinstance(model, str):
            if peft_config is None:
                peft_config = args.lora_config()
            model = FunctionStepPRM.from_backbone(
                model, lora_config=peft_config, step_token=args.step_token, max_length=args.max_length
            )
        elif not isinstance(model, FunctionStepPRM):
            raise TypeError(
                f"model must be a FunctionStepPRM or a backbone name/path, got {type(model).__name__}; "
                "wrap a transformers model with FunctionStepPRM.from_backbone(model, tokenizer)."
            )
        elif peft_config is not None:
            raise ValueError(
                "peft_config is only used when model is a backbone name/path; a FunctionStepPRM already has its "
                "adapters (build it with FunctionStepPRM.from_backbone(..., lora_config=peft_config))."
            )
        if model.prm_config.step_token != args.step_token:
            raise ValueError(
                f"The PRM uses step_token={model.prm_config.step_token!r} but args.step_token={args.step_token!r}; "
                "set FunctionStepPRMConfig.step_token to the PRM's."
            )
        args.max_length = fit_max_length(model.backbone, args.max_length)
        cfg = model.prm_config
        cfg.loss_type, cfg.label_smoothing = args.label_loss, args.label_smoothing
        cfg.aggregation, cfg.max_length = args.score_aggregation, args.max_length
        return model

    def _check_meta_step_supported(self) -> None:
        if self.is_fsdp_enabled or self.is_deepspeed_enabled:
            backend = "FSDP" if self.is_fsdp_enabled else "DeepSpeed"
            raise ValueError(
                f"meta_method={self.args.meta_method!r} cannot run under {backend}: the meta step perturbs and "
                "differentiates replicated parameters and reads their gradients, which sharded/partitioned "
                "training does not expose. Use DDP (`accelerate launch --multi_gpu`, torchrun) or "
                "meta_method='none'."
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
        per_step = step_loss(
            outputs.step_logits, targets.to(outputs.step_logits.dtype), mask, self.args.label_loss,
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
        if self.meta_table is not None and self.accelerator.sync_gradients:
            window, self._window = self._window, []
            step, args = self.state.global_step, self.args  # optimizer steps completed before this one
            if step < args.meta_warmup_steps:
                self._warmup_meta_backward(model)
            elif (step - args.meta_warmup_steps) % args.meta_interval == 0:
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
        hypergrad, meta_loss = self.compute_hypergradient(model, window, num_items)
        seen = (hypergrad != 0) & self.meta_table.learnable
        grad = standardise_hypergradient(hypergrad.to(phi.dtype), seen)
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
    ) -> tuple[Tensor, Tensor]:
        """``(d L_meta / d phi, L_meta)`` of the one-step unroll over ``window``, summed/averaged over processes.

        ``darts`` takes the inner gradient from ``.grad`` (left by the plain step, already averaged over processes;
        zeros if absent) and needs one forward+backward on the meta batch plus two forwards per micro-batch.
        ``exact`` recomputes everything through ``torch.func``; under several processes its unrolled step uses
        this process's share of the inner gradient only (an approximation ``darts`` does not make).
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
        was_training = prm.training
        prm.eval()  # deterministic (no dropout) meta forwards
        try:
            if self.args.hypergradient == "darts":
                grads = [p.grad.detach() if p.grad is not None else torch.zeros_like(p) for p in params]

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
        finally:
            prm.train(was_training)
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
        if "loss" in logs and self.meta_table is not None:
            for key, values in self._meta_logs.items():
                if values:
                    logs[key] = sum(values) / len(values)
            self._meta_logs.clear()
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
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
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

        from .metrics import rerank_metrics

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
    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Release format (`FunctionStepPRM.save_pretrained`), trainable weights for exact resume, model card."""
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        from safetensors.torch import save_file
        from transformers.trainer import TRAINING_ARGS_NAME

        os.makedirs(output_dir, exist_ok=True)
        prm = self.accelerator.unwrap_model(self.model)
        prm.save_pretrained(output_dir)
        trainable = {n: p.detach().contiguous().cpu() for n, p in prm.named_parameters() if p.requires_grad}
        save_file(trainable, os.path.join(output_dir, TRAINABLE_STATE_NAME), metadata={"format": "pt"})
        torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))
        self.create_model_card(output_dir=output_dir)

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        if self.meta_table is not None and self.args.should_save:
            run_dir = self._get_output_dir(trial=trial)
            out = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
            os.makedirs(out, exist_ok=True)
            torch.save(
                {
                    "kind": self.meta_table.kind,
                    "num_rows": len(self.noisy_labels),
                    "table": {k: v.cpu() for k, v in self.meta_table.state_dict().items()},
                    "optimizer": self.meta_optimizer.state_dict(),
                },
                os.path.join(out, META_STATE_NAME),
            )
        super()._save_checkpoint(model, trial)

    def _load_trainable_state(self, checkpoint: str) -> None:
        from safetensors.torch import load_file

        path = os.path.join(checkpoint, TRAINABLE_STATE_NAME)
        if not os.path.isfile(path):
            raise ValueError(
                f"{checkpoint!r} has no {TRAINABLE_STATE_NAME}; it was not written by FunctionStepPRMTrainer."
            )
        prm = self.accelerator.unwrap_model(self.model)
        state = load_file(path, device=str(self.args.device))
        expected = {n for n, p in prm.named_parameters() if p.requires_grad}
        if set(state) != expected:
            raise ValueError(
                f"{path} holds {len(state)} tensors but the PRM trains {len(expected)}; "
                f"missing {sorted(expected - set(state))[:5]}, unexpected {sorted(set(state) - expected)[:5]}. "
                "Resume with the same model and LoRA settings."
            )
        with torch.no_grad():
            params = dict(prm.named_parameters())
            for name, value in state.items():
                params[name].copy_(value)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        """Restore trainable weights, the meta table and the meta optimizer from a checkpoint."""
        self._load_trainable_state(resume_from_checkpoint)
        if self.meta_table is None:
            return
        path = os.path.join(resume_from_checkpoint, META_STATE_NAME)
        if not os.path.isfile(path):
            raise ValueError(
                f"{resume_from_checkpoint!r} has no {META_STATE_NAME} but meta_method={self.args.meta_method!r}; "
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

    def _load_best_model(self) -> None:
        self._load_trainable_state(self.state.best_model_checkpoint)

    # ------------------------------------------------------------------------------------------- model card
    def create_model_card(
        self,
        model_name: str | None = None,
        dataset_name: str | list[str] | None = None,
        tags: str | list[str] | None = None,
        output_dir: str | None = None,
        **kwargs: Any,
    ) -> None:
        """Write ``README.md`` (rendered from ``model_cards/prm_model_card.md``) into ``output_dir``."""
        if not self.is_world_process_zero():
            return
        output_dir = output_dir or self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        card = render_model_card(self, model_name=model_name, dataset_name=dataset_name, tags=tags)
        with open(os.path.join(output_dir, "README.md"), "w", encoding="utf-8") as f:
            f.write(card)


# ----------------------------------------------------------------------------------------------- model card
def _template() -> str:
    try:
        return resources.files("dreamprm_trl").joinpath("templates", MODEL_CARD_TEMPLATE).read_text("utf-8")
    except (FileNotFoundError, OSError):
        repo = Path(__file__).resolve().parents[1] / "model_cards" / MODEL_CARD_TEMPLATE
        return repo.read_text(encoding="utf-8")


def _lora_summary(prm: FunctionStepPRM) -> str:
    peft_config = getattr(prm.backbone, "peft_config", None)
    if not prm.prm_config.lora or not peft_config:
        return "none, full fine-tuning"
    cfg = next(iter(peft_config.values()))
    targets = ", ".join(sorted(cfg.target_modules)) if cfg.target_modules else "default"
    return f"r={cfg.r}, alpha={cfg.lora_alpha}, dropout={cfg.lora_dropout} on {targets}"


def _metrics_table(log_history: list[dict]) -> str:
    latest: dict[str, float] = {}
    for entry in log_history:
        for k, v in entry.items():
            if isinstance(v, (int, float)) and (k.startswith("eval_") or k in ("loss", "meta/loss", "meta/label_shift",
                                                                            "meta/labels_crossed")):
                latest[k] = v
    if not latest:
        return "No metrics logged yet."
    rows = "\n".join(f"| {k} | {v:.4g} |" for k, v in sorted(latest.items()))
    return "| metric | value |\n|---|---|\n" + rows


def render_model_card(
    trainer: FunctionStepPRMTrainer,
    model_name: str | None = None,
    dataset_name: str | list[str] | None = None,
    tags: str | list[str] | None = None,
) -> str:
    """The PRM model card: base model, data, method, metrics and how to score a candidate."""
    args = trainer.args
    prm = trainer.accelerator.unwrap_model(trainer.model)
    base = prm.prm_config.backbone or "a backbone built from a config"
    tags = [tags] if isinstance(tags, str) else list(tags or [])
    datasets = [dataset_name] if isinstance(dataset_name, str) else list(dataset_name or [])
    name = model_name or args.hub_model_id or Path(args.output_dir).name
    method = {
        "label_correction": "meta label correction (bi-level, learnable step labels, "
        f"{args.hypergradient} hypergradient)",
        "sample_reweighting": f"meta sample reweighting (bi-level, a learnable weight per row, {args.hypergradient})",
        "none": "plain PRM training on Monte-Carlo step labels (no meta learning)",
    }[args.meta_method]
    front = ["---", "library_name: dreamprm-trl"]
    if prm.prm_config.backbone and prm.prm_config.backbone_source == "hub":
        front.append(f"base_model: {prm.prm_config.backbone}")
    front.append("tags:")
    front += [f"- {t}" for t in dict.fromkeys(trainer._tag_names + tags)]
    if datasets:
        front.append("datasets:")
        front += [f"- {d}" for d in datasets]
    front.append("---")
    return string.Template(_template()).safe_substitute(
        front_matter="\n".join(front),
        model_name=name,
        base_model=base,
        datasets=", ".join(datasets) or "step rows with Monte-Carlo labels + whole programs with unit-test verdicts",
        method=method,
        aggregation=args.score_aggregation,
        step_token=prm.prm_config.step_token,
        num_train_rows=len(trainer.noisy_labels),
        num_meta_rows=len(trainer.meta_dataset) if trainer.meta_dataset is not None else 0,
        learning_rate=args.learning_rate,
        meta_learning_rate=args.meta_learning_rate,
        label_loss=args.label_loss,
        lora=_lora_summary(prm),
        global_step=trainer.state.global_step,
        metrics_table=_metrics_table(trainer.state.log_history),
        repo_id=args.hub_model_id or name,
    )
