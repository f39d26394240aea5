"""The meta step of `FunctionStepPRMTrainer`, as a mixin: building and checking the meta table, the warm-up on
train ∪ meta, the meta batch and loss, the hypergradient (DARTS, exact or Neumann) and the update of the table.

Every meta method is reached through the `meta_methods.MetaTable` interface (targets, inner gradient, results), so
nothing here depends on which method runs; the pure maths is in `hypergradient`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..prm import aggregate_scores
from ..schema import IGNORE_INDEX, LABEL_FIXED, STEPS, TASK_ID
from .config import META_LEARNING_RATES
from .hypergradient import (
    adam_preconditioner,
    darts_hypergradient,
    exact_hypergradient,
    implicit_hypergradient,
    standardise_hypergradient,
)
from .meta_methods import MetaTable, build_table, weighted_step_loss
from .scale import deterministic_train_mode, fp32_parameters, unscaled_grads

logger = logging.getLogger(__name__)

MODEL_INPUTS = ("input_ids", "attention_mask", "step_positions")


def _grads(loss: Tensor, params: list[nn.Parameter]) -> list[Tensor]:
    """``d loss / d params``, zeros for parameters the loss does not reach (nothing accumulates in ``.grad``)."""
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


class MetaStepMixin:
    """The meta-learning half of `FunctionStepPRMTrainer` (mixed into it; uses the Trainer's state and args)."""

    # ------------------------------------------------------------------------------------------- the table
    def _build_meta_table(self, train_dataset: Any) -> tuple[MetaTable | None, torch.optim.Optimizer | None]:
        """The meta table over the train labels (clean ``label_fixed`` entries frozen) and its optimizer."""
        args = self.args
        if args.meta_method == "none":
            return None, None
        self._check_meta_split(train_dataset)
        cols = train_dataset.column_names
        fixed = train_dataset[LABEL_FIXED] if LABEL_FIXED in cols else None
        table = build_table(args.meta_method, self.noisy_labels, fixed)
        if table is None:
            return None, None
        self._check_meta_step_supported()
        if args.meta_calibrate and table.probes_clean and not bool(table.probes.any()):
            logger.warning(
                "meta_calibrate=True but no train row has a clean label (label_fixed): nothing to measure the "
                "hypergradient's reliability on, so label steps stay unscaled. Keep each trajectory's verdict as its "
                "last label, flagged in label_fixed (labeling.label_steps writes both), or set meta_calibrate=False."
            )
        table.to(args.device)
        lr = args.meta_learning_rate or META_LEARNING_RATES[args.meta_method]
        return table, table.make_optimizer(lr)

    def _check_meta_split(self, train_dataset: Any) -> None:
        """Never the same program in train and meta; with ``meta_split='task'`` never the same problem."""
        meta = self.meta_dataset
        if meta is None or self.args.meta_method == "none":
            return
        both = set(train_dataset.column_names) & set(meta.column_names)
        if self.args.meta_split == "task" and TASK_ID in both:
            shared = set(train_dataset[TASK_ID]) & set(meta[TASK_ID])
            if shared:
                raise ValueError(
                    f"meta_split='task' needs disjoint problems, but {len(shared)} task ids are in both train and "
                    f"meta sets (e.g. {sorted(shared)[:3]}); split with training.split_by_task or set "
                    "meta_split='program'."
                )
        if STEPS in both:  # the same program of the same problem (or of any problem, without task ids)
            def keys(ds):
                tasks = ds[TASK_ID] if TASK_ID in both else [""] * len(ds)
                return {(t, "".join(s)) for t, s in zip(tasks, ds[STEPS])}

            shared = keys(train_dataset) & keys(meta)
            if shared:
                raise ValueError(
                    f"{len(shared)} programs are both train rows and meta programs; a program's verdict must not "
                    "be judged by itself. Remove them from one of the two sets."
                )

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

    # ------------------------------------------------------------------------------------------- results
    def corrected_labels(self) -> list[list[float | None]]:
        """Current corrected labels ``y_hat`` of every train row, aligned with its step labels (list of lists).

        With ``sample_reweighting`` or ``none`` the labels are not changed and the noisy labels are returned.
        """
        if self.meta_table is None:
            return [list(r) for r in self.noisy_labels]
        return self.meta_table.corrected()

    def sample_weights(self) -> list[list[float | None]] | None:
        """Current weight of every train prefix (``sample_reweighting``: one per step label, in [0, 2], clean
        verdicts fixed at 1), aligned with the rows' step labels; ``None`` for the other methods."""
        return None if self.meta_table is None else self.meta_table.row_weights()

    # ------------------------------------------------------------------------------------------- meta batch
    def _warmup_meta_backward(self, model: nn.Module) -> None:
        """Warm-up on train ∪ meta (the authors): add the supervised meta-batch loss to this step's gradient."""
        batch = self._meta_batch()
        with self.compute_loss_context_manager():
            logits = model(**{k: batch[k] for k in MODEL_INPUTS}).step_logits
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
        """BCE of each program's own score (its last step) against its unit-test verdict, mean over the meta batch.

        The last step, not ``args.aggregation``, as the authors' code: a complete program's last-step score is the
        PRM's judgement of the whole program. With ``min`` the meta loss reached the labels through whichever step
        scored lowest; on the marked benchmark family, 3 seeds, the worst wrong-side ratio went 0.29x -> 0.15x.
        """
        mask = batch["step_positions"] != IGNORE_INDEX
        keep = mask.any(-1)
        score = aggregate_scores(step_logits[keep], "last", mask=mask[keep], logits=True)
        return F.binary_cross_entropy(score.clamp(1e-6, 1 - 1e-6), batch["final_labels"][keep].to(score.dtype))

    def _table_loss(self, step_logits: Tensor, batch: dict[str, Tensor], phi: Tensor, num_items: Tensor) -> Tensor:
        """The inner loss of one micro-batch as a function of the table variable ``phi`` (``exact``, ``neumann``)."""
        targets, weights = self.meta_table.targets(batch["row_ids"], batch["step_labels"], phi)
        per, _ = weighted_step_loss(step_logits, targets, weights, self.args.loss_type, self.args.label_smoothing)
        return per.sum() / num_items

    def _table_grad(self, step_logits: Tensor, batch: dict[str, Tensor], num_items: Tensor) -> Tensor:
        """``d l / d phi`` of one micro-batch from its step logits alone (`MetaTable.inner_grad`)."""
        return self.meta_table.inner_grad(step_logits, batch["step_labels"], batch["row_ids"], self.args.loss_type,
                                          self.args.label_smoothing, num_items)

    # ------------------------------------------------------------------------------------------- meta update
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
        if self.args.meta_calibrate and self.meta_table.probes_clean:  # how far the clean verdicts back this step
            reliability = self.meta_table.reliability(hypergrad, seen, self.args.meta_centre_hypergradient)
            grad = grad * reliability
            self._meta_logs["meta/reliability"].append(reliability)
        if self.args.meta_weight_decay:  # in the standardised units: on the raw ~1e-6 scale it swamped the signal
            grad = grad + self.meta_table.decay_grad(self.args.meta_weight_decay) * seen
        grad = self.meta_table.step_direction(grad)
        phi.grad = self.meta_table.sparse_grad(grad)  # sparse: rows not in this window keep still
        self.meta_optimizer.step()
        self.meta_optimizer.zero_grad(set_to_none=True)
        self.meta_table.project_()
        self._meta_logs["meta/loss"].append(meta_loss.item())
        self._meta_logs["meta/hypergrad_norm"].append(hypergrad.norm().item())

    def compute_hypergradient(
        self, model: nn.Module, window: Sequence[dict[str, Tensor]], num_items: Tensor | None
    ) -> tuple[Tensor, Tensor] | None:
        """``(d L_meta / d phi, L_meta)`` over ``window``, summed/averaged over processes: of the one-step unroll
        (``darts``, ``exact``) or of the implicit function at the current parameters (``neumann``).

        ``darts`` takes the inner gradient from ``.grad`` (left by the plain step, already averaged over processes;
        zeros if absent) and needs one forward+backward on the meta batch plus two forwards per micro-batch.
        ``exact`` recomputes everything through ``torch.func``; under several processes its unrolled step uses
        this process's share of the inner gradient only (an approximation ``darts`` does not make).
        ``neumann`` adds ``2 (3 + neumann_steps)`` forward+backward passes of the window (Hessian-vector products).
        ``None`` when fp16 gradients overflowed (`scale.unscaled_grads`); the meta step is then skipped.
        """
        prm = self.accelerator.unwrap_model(model)
        named = [(n, p) for n, p in prm.named_parameters() if p.requires_grad]
        if num_items is None:
            num_items = sum((b["step_labels"] != IGNORE_INDEX).sum() for b in window)
        num_items = torch.as_tensor(num_items, device=self.meta_table.phi.device).float().clamp(min=1)
        lr = self.args.meta_inner_learning_rate or (
            self._get_learning_rate() if self.lr_scheduler is not None else self.args.learning_rate
        )
        meta_batch = self._meta_batch()
        world = self.accelerator.num_processes
        scale = self._unroll_preconditioner(named)
        # deterministic (no dropout) meta passes that still checkpoint; fp32 so the finite differences are exact
        with deterministic_train_mode(prm), fp32_parameters(prm):
            if self.args.hypergradient == "darts":
                result = self._darts(prm, [p for _, p in named], window, meta_batch, num_items, lr, scale)
            elif self.args.hypergradient == "neumann":
                result = self._implicit(prm, [p for _, p in named], window, meta_batch, num_items)
            else:
                precondition = None if scale is None else {n: d for (n, _), d in zip(named, scale)}
                result = self._exact(prm, named, window, meta_batch, num_items, lr, precondition)
        if result is None:
            return None
        hypergrad, meta_loss = result
        if world > 1:
            hypergrad = self.accelerator.reduce(hypergrad.contiguous(), "sum")
            meta_loss = self.accelerator.reduce(meta_loss.detach().reshape(1), "mean")[0]
        if not torch.isfinite(hypergrad).all():
            raise FloatingPointError(
                f"Non-finite meta gradient at step {self.state.global_step}; lower meta_learning_rate or darts_alpha"
                + (" or neumann_steps, or use hypergradient='darts'." if self.args.hypergradient == "neumann" else ".")
            )
        return hypergrad, meta_loss

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """`Trainer.create_optimizer`; with ``meta_unroll="adam"`` it also checks, before any step, that the PRM
        optimizer keeps Adam moments for every trainable parameter (a custom optimizer included)."""
        optimizer = super().create_optimizer(model)
        if getattr(self, "meta_table", None) is not None and self.args.meta_unroll == "adam":
            self._adam_groups([(n, p) for n, p in self.model.named_parameters() if p.requires_grad])
        return optimizer

    def _adam_groups(self, named: list[tuple[str, nn.Parameter]]) -> tuple[torch.optim.Optimizer, list[dict]]:
        """The PRM optimizer and each parameter's Adam param group; a ``ValueError`` naming the fix without one."""
        opt = getattr(self.optimizer, "optimizer", self.optimizer)
        groups = {id(p): g for g in opt.param_groups for p in g["params"]}
        for name, p in named:
            group = groups.get(id(p))
            if group is None or "betas" not in group:
                raise ValueError(
                    f"meta_unroll='adam' reads Adam's second moments, but the PRM optimizer "
                    f"({type(opt).__name__}) has no Adam betas for parameter {name!r}; use an Adam-family optim "
                    "(e.g. optim='adamw_torch') or meta_unroll='sgd'."
                )
        return opt, [groups[id(p)] for _, p in named]

    def _unroll_preconditioner(self, named: list[tuple[str, nn.Parameter]]) -> list[Tensor] | None:
        """``meta_unroll="adam"``: the PRM optimizer's diagonal Adam step scale per parameter (`adam_preconditioner`);
        ``None`` (an SGD unroll) with ``"sgd"`` or before the optimizer's first step."""
        if self.args.meta_unroll != "adam":
            return None
        opt, groups = self._adam_groups(named)
        scale = []
        for (_, p), group in zip(named, groups):
            d = adam_preconditioner(opt.state.get(p, {}), group["betas"][1], group["eps"])
            if d is None:  # no step taken yet (no warm-up): every parameter gets the SGD unroll alike
                return None
            scale.append(d.to(p.device))
        return scale

    def _meta_grad_fn(self, prm, params, meta_batch):
        """A closure: ``(grad_theta L_meta, L_meta)`` on ``meta_batch`` at the current parameters."""
        def meta_grad_fn():
            with torch.enable_grad():
                loss = self._meta_loss(prm(**{k: meta_batch[k] for k in MODEL_INPUTS}).step_logits, meta_batch)
                return _grads(loss, params), loss
        return meta_grad_fn

    def _table_grad_fn(self, prm, window, num_items):
        """A closure: ``d l / d phi`` of the window at the current parameters (forward passes only)."""
        @torch.no_grad()
        def table_grad_fn():
            return sum(
                self._table_grad(prm(**{k: b[k] for k in MODEL_INPUTS}).step_logits, b, num_items)
                for b in window
            )
        return table_grad_fn

    def _mean_over_processes(self, v: list[Tensor]) -> list[Tensor]:
        """``v`` averaged over processes, so every rank perturbs its parameters identically."""
        return [self.accelerator.reduce(t, "mean") for t in v] if self.accelerator.num_processes > 1 else v

    def _inner_grads(self, params: list[nn.Parameter]) -> list[Tensor] | None:
        """The plain step's inner gradient from ``.grad``, unscaled (zeros where absent; ``None`` on an fp16
        overflow, when the optimizer skips the step and so does the meta step)."""
        return unscaled_grads([p.grad if p.grad is not None else torch.zeros_like(p) for p in params],
                              self.accelerator.scaler)

    def _darts(self, prm, params, window, meta_batch, num_items, lr, scale=None) -> tuple[Tensor, Tensor] | None:
        """DARTS hypergradient from the inner gradient in ``.grad`` (``None`` on an fp16 overflow)."""
        grads = self._inner_grads(params)
        if grads is None:
            return None
        return darts_hypergradient(params, grads, lr, self._meta_grad_fn(prm, params, meta_batch),
                                   self._table_grad_fn(prm, window, num_items), self.args.darts_alpha,
                                   self._mean_over_processes, scale)

    def _implicit(self, prm, params, window, meta_batch, num_items) -> tuple[Tensor, Tensor] | None:
        """Implicit-function hypergradient at the current parameters, ``H^-1 v`` by ``neumann_steps`` terms
        (``None`` on an fp16 overflow, when the optimizer skips the step too).

        The Hessian-vector products differentiate the inner loss of the plain step: the table's targets and
        weights, summed over the window's valid steps and divided by ``num_items`` (all processes), times the
        number of processes, so that their mean over processes is the single-process product. Not
        `compute_loss`: the meta passes run in eval mode, where it falls back to the raw labels.
        """
        if self._inner_grads(params) is None:
            return None
        phi, world = self.meta_table.phi.detach(), self.accelerator.num_processes

        def inner_grad_fn():
            with torch.enable_grad():
                return _grads(sum(self._table_loss(prm(**{k: b[k] for k in MODEL_INPUTS}).step_logits.float(), b,
                                                   phi, num_items) for b in window) * world, params)

        return implicit_hypergradient(params, self._meta_grad_fn(prm, params, meta_batch),
                                      self._table_grad_fn(prm, window, num_items), inner_grad_fn,
                                      self.args.neumann_steps, self.args.darts_alpha, self._mean_over_processes)

    def _exact(self, prm, named, window, meta_batch, num_items, lr, precondition=None) -> tuple[Tensor, Tensor]:
        """Second-order hypergradient through ``torch.func.functional_call`` (this process's window)."""
        theta = {n: p for n, p in named}

        def logits(params, batch):
            return torch.func.functional_call(
                prm, params, args=(), kwargs={k: batch[k] for k in MODEL_INPUTS}, strict=False
            ).step_logits

        def inner_loss(params, phi):
            return sum(self._table_loss(logits(params, b), b, phi, num_items) for b in window)

        def meta_loss(params):
            return self._meta_loss(logits(params, meta_batch), meta_batch)

        with torch.enable_grad():
            return exact_hypergradient(inner_loss, meta_loss, theta, self.meta_table.phi, lr, precondition)
