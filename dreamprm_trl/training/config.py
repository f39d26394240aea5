"""`FunctionStepPRMConfig`: the training arguments of `FunctionStepPRMTrainer` (a `TrainingArguments` subclass)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from transformers import TrainingArguments

from ..prm.inputs import STEP_TOKEN
from ..prm.lora import LORA_DEFAULTS
from ..prm.losses import AGGREGATIONS, LOSS_TYPES

META_METHODS = ("label_correction", "sample_reweighting", "none")
HYPERGRADIENTS = ("darts", "exact", "neumann")
META_UNROLLS = ("sgd", "adam")
META_SPLITS = ("task", "program")
#: Default meta learning rate per method (``meta_learning_rate=None``); see the field's help for the sources.
META_LEARNING_RATES = {"label_correction": 0.5, "sample_reweighting": 1e-2}
#: Fields this config shares with `prm.PRMConfig`, under the same names: the trainer copies them into the PRM's
#: config so that a saved PRM records how it was trained.
PRM_FIELDS = ("step_token", "loss_type", "label_smoothing", "aggregation", "max_length")


@dataclass
class FunctionStepPRMConfig(TrainingArguments):
    r"""Configuration of [`FunctionStepPRMTrainer`]: a function-as-step PRM with bi-level meta label correction.

    Only the fields specific to PRM training are listed; see [`~transformers.TrainingArguments`] for the rest. Every
    field is a command-line flag through [`~transformers.HfArgumentParser`] / [`~trl.TrlParser`] (``--config x.yaml``).

    Parameters:
        > Model

        model_init_kwargs (`dict[str, Any]`, *optional*): keyword arguments of `AutoModel.from_pretrained` when the
            trainer's ``model`` is a name or path, e.g. ``{"dtype": "bfloat16", "attn_implementation": "sdpa",
            "quantization_config": BitsAndBytesConfig(load_in_4bit=True)}`` (a dict is turned into a
            `BitsAndBytesConfig`). ``dtype`` defaults to ``float32``, as in TRL.

        > Data and model input

        max_length (`int`, defaults to `1024`): token budget of one (prompt, program) row; the prompt is truncated
            from the left first, rows whose code alone does not fit are dropped (counted).
        step_token (`str`, defaults to `"<|step|>"`): special token appended after every step; the head reads it.
        label_key (`str`, *optional*): column of the train rows holding the soft step labels; ``None`` picks
            ``"labels"`` then ``"mc_labels"``.
        loss_type (`str`, defaults to `"bce"`): per-step loss against soft labels, ``bce`` (with logits) or ``mse``
            (on the sigmoid, the authors' code). ``bce`` is the default because label correction needs it: on the
            suite's flipped-label task the corrected labels cross back with ``bce`` (20 -> 0 wrong) and not with
            ``mse`` (20 -> 23), see the README.
        label_smoothing (`float`, defaults to `0.1`): targets become ``y (1 - s) + s / 2`` (the authors' 0.1); the
            one target transform of every meta method, so comparisons between them are not confounded.
        aggregation (`str`, defaults to `"min"`): how step scores make a program score in evaluation and
            reranking (``min | mean | last | prod | logodds``); the meta loss always reads a program's last step.

        > LoRA (used when the trainer builds the PRM from a backbone name and no ``peft_config`` is given)

        lora_r (`int`, defaults to `8`), lora_alpha (`int`, defaults to `16`), lora_dropout (`float`, defaults to
            `0.05`), lora_target_modules (`list[str]`, *optional*): the paper's LoRA on q/k/v/o projections; the
            defaults are `prm.LORA_DEFAULTS`.

        > Meta learning (bi-level label correction)

        meta_method (`str`, defaults to `"label_correction"`): ``label_correction`` (learnable step labels, the
            paper), ``sample_reweighting`` (a learnable weight per train prefix, the authors' released code) or
            ``none`` (plain PRM training).
        hypergradient (`str`, defaults to `"darts"`): ``darts`` (finite-difference, first order, forward passes
            only for the label term), ``exact`` (second order through ``torch.func``; needs eager attention), both
            of the one-step unroll; or ``neumann``: the implicit-function hypergradient at the current PRM,
            ``-d2l/(dphi dtheta) H^-1 v``, with ``H^-1 v`` from ``neumann_steps`` Neumann terms (Hessian-vector
            products by finite differences of the window's inner gradient; see the README for what it measured).
        darts_alpha (`float`, defaults to `0.01`): finite-difference step ``eps = darts_alpha / ||v||`` (DARTS and
            the Neumann Hessian-vector products).
        neumann_steps (`int`, defaults to `5`): ``hypergradient="neumann"`` only: Neumann terms ``K`` of
            ``H^-1 v``; each costs two forward+backward passes of the window, plus six for the step size.
        meta_learning_rate (`float`, *optional*): learning rate of the meta table; ``None`` picks the method's
            default: 0.5 for label correction (SGD on labels in [0, 1], at most 0.5 per visit; see the README),
            1e-2 for sample reweighting (the authors' code).
        meta_weight_decay (`float`, defaults to `0.002`): pulls the table towards its initial state (noisy labels,
            weights 1); the authors' 0.002.
        meta_interval (`int`, defaults to `1`): optimizer steps between meta updates.
        meta_warmup_steps (`int` or `float`, defaults to `0.25`): plain supervised training on train rows and meta
            programs (train ∪ meta, as the authors) before the first meta update. As `warmup_steps`: an integer is a
            count of optimizer steps, a float in [0, 1) a share of the run (rounded up). A share, because the meta
            step needs a PRM that has learned something: a fixed 20 steps was too early in a run 4 x longer (see
            the README). ``meta_method="none"`` gets the same warm-up when given a ``meta_dataset``, so every
            method sees the same data.
        meta_centre_hypergradient (`bool`, defaults to `True`): subtract the window mean of the label hypergradient
            before standardising it. The raw hypergradient is mostly a common mode (the meta set's base rate pushes
            every label the same way); see the README for the measurements.
        meta_calibrate (`bool`, defaults to `True`): label correction only. Scale each label step by the
            hypergradient's measured reliability: on the window's *clean* final labels, whose truth is known,
            ``P(up | passed) - P(up | failed)`` of its direction (running counts over meta steps), one standard
            error below its estimate, floored at 0 (`LabelTable.reliability`). Where the clean verdicts cannot tell
            good steps from bad ones the labels stay put instead of taking a random walk; rows without
            ``label_fixed`` give no clean labels and leave the step unscaled.
        meta_batch_size (`int`, defaults to `16`): whole programs per process in one meta loss.
        meta_split (`str`, defaults to `"task"`): how the meta set must relate to the train rows, checked when both
            have ``task_id``: ``task`` (disjoint problems, the default) or ``program`` (problems may be shared, never
            the same program). `training.split_by_task` builds a ``task`` split.
        meta_inner_learning_rate (`float`, *optional*): ``eta`` of the unrolled step; ``None`` uses the
            current learning rate of the PRM optimizer.
        meta_unroll (`str`, defaults to `"sgd"`): the inner step the one-step unroll models: ``sgd``
            (``theta - eta g``) or ``adam`` (``theta - eta g / (sqrt(v_hat) + eps)``, Adam's second moments read
            from the PRM optimizer, so the hypergradient weighs each parameter as the real AdamW step does).

    > [!NOTE]
    > Defaults differing from [`~transformers.TrainingArguments`]: `learning_rate` 1e-4 (the paper),
    > `logging_steps` 10, `remove_unused_columns` False (the collator needs the raw ``prompt``/``steps`` columns).
    """

    _VALID_DICT_FIELDS = TrainingArguments._VALID_DICT_FIELDS + ["model_init_kwargs"]

    learning_rate: float = field(
        default=1e-4, metadata={"help": "Initial AdamW learning rate of the PRM (the paper: 1e-4)."}
    )
    logging_steps: float = field(default=10, metadata={"help": "Log every X optimizer steps (float < 1: ratio)."})
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Must stay False: the collator reads the raw prompt/steps columns."}
    )

    # Model
    model_init_kwargs: dict[str, Any] | str | None = field(
        default=None,
        metadata={"help": "AutoModel.from_pretrained kwargs when model is a name/path (dtype, attn_implementation, "
                          "quantization_config); JSON on the command line."},
    )

    # Data and model input
    max_length: int = field(default=1024, metadata={"help": "Token budget per row; prompt truncated from the left."})
    step_token: str = field(
        default=STEP_TOKEN, metadata={"help": "Special token closing every step; the head reads it."}
    )
    label_key: str | None = field(
        default=None, metadata={"help": "Column of soft step labels; None tries 'labels' then 'mc_labels'."}
    )
    loss_type: str = field(
        default="bce", metadata={"help": "Per-step loss on soft labels.", "choices": list(LOSS_TYPES)}
    )
    label_smoothing: float = field(
        default=0.1, metadata={"help": "Smooth targets towards 0.5: y(1-s) + s/2 (every meta method)."}
    )
    aggregation: str = field(
        default="min",
        metadata={"help": "Step scores -> program score (evaluation, reranking; the meta loss reads the last step).",
                  "choices": list(AGGREGATIONS)},
    )

    # LoRA
    lora_r: int = field(
        default=LORA_DEFAULTS["r"], metadata={"help": "LoRA rank (used when the trainer builds the PRM)."}
    )
    lora_alpha: int = field(default=LORA_DEFAULTS["lora_alpha"], metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=LORA_DEFAULTS["lora_dropout"], metadata={"help": "LoRA dropout."})
    lora_target_modules: list[str] | None = field(
        default=None, metadata={"help": "Modules to adapt; None uses the PRM's default (attention q/k/v/o)."}
    )

    # Meta learning
    meta_method: str = field(
        default="label_correction",
        metadata={"help": "Bi-level method.", "choices": list(META_METHODS)},
    )
    hypergradient: str = field(
        default="darts",
        metadata={"help": "darts (finite difference) or exact (second order) of the one-step unroll, or neumann "
                  "(implicit function, Neumann series).", "choices": list(HYPERGRADIENTS)},
    )
    darts_alpha: float = field(
        default=0.01, metadata={"help": "Finite-difference perturbation: eps = darts_alpha / ||v||."}
    )
    neumann_steps: int = field(
        default=5, metadata={"help": "hypergradient=neumann: Neumann terms of the inverse Hessian-vector product."}
    )
    meta_learning_rate: float | None = field(
        default=None,
        metadata={"help": "Meta table learning rate; None: 0.5 (label_correction), 1e-2 (sample_reweighting)."},
    )
    meta_weight_decay: float = field(
        default=0.002, metadata={"help": "Decay of the meta table towards its initial state (noisy labels, weight 1)."}
    )
    meta_interval: int = field(default=1, metadata={"help": "Optimizer steps between meta updates."})
    meta_warmup_steps: float = field(
        default=0.25,
        metadata={"help": "Supervised training on train + meta before meta updates: optimizer steps (an integer) or "
                  "a share of the run (a float in [0, 1))."},
    )
    meta_batch_size: int = field(default=16, metadata={"help": "Whole programs per process in one meta loss."})
    meta_split: str = field(
        default="task",
        metadata={"help": "Meta vs train rows: disjoint problems (task) or only disjoint programs (program).",
                  "choices": list(META_SPLITS)},
    )
    meta_centre_hypergradient: bool = field(
        default=True, metadata={"help": "Subtract the window mean of the label hypergradient before standardising."}
    )
    meta_calibrate: bool = field(
        default=True,
        metadata={"help": "label_correction: scale label steps by how well the hypergradient's direction tells the "
                  "clean final labels' passes from failures (a lower bound of the rate difference, running); no "
                  "clean labels: unscaled."},
    )
    meta_inner_learning_rate: float | None = field(
        default=None, metadata={"help": "Unrolled step size; None uses the PRM optimizer's current lr."}
    )
    meta_unroll: str = field(
        default="sgd",
        metadata={"help": "Inner step the unroll models: sgd, or adam (the PRM optimizer's second moments).",
                  "choices": list(META_UNROLLS)},
    )

    def __post_init__(self):
        super().__post_init__()
        checks = [
            ("meta_method", self.meta_method in META_METHODS, f"one of {META_METHODS}"),
            ("hypergradient", self.hypergradient in HYPERGRADIENTS, f"one of {HYPERGRADIENTS}"),
            ("meta_unroll", self.meta_unroll in META_UNROLLS, f"one of {META_UNROLLS}"),
            ("loss_type", self.loss_type in LOSS_TYPES, f"one of {LOSS_TYPES}"),
            ("aggregation", self.aggregation in AGGREGATIONS, f"one of {AGGREGATIONS}"),
            ("max_length", self.max_length > 0, "a positive token count, e.g. 1024"),
            ("step_token", bool(self.step_token), "a non-empty special token such as '<|step|>'"),
            ("label_smoothing", 0.0 <= self.label_smoothing < 1.0, "in [0, 1), e.g. 0.0"),
            ("darts_alpha", self.darts_alpha > 0, "positive, e.g. 0.01"),
            ("neumann_steps", self.neumann_steps >= 0, "an integer >= 0, e.g. 5"),
            ("meta_learning_rate", self.meta_learning_rate is None or self.meta_learning_rate > 0,
             "positive or None (the method's default)"),
            ("meta_split", self.meta_split in META_SPLITS, f"one of {META_SPLITS}"),
            ("meta_weight_decay", self.meta_weight_decay >= 0, "non-negative"),
            ("meta_interval", self.meta_interval >= 1, "an integer >= 1"),
            ("meta_warmup_steps", self.meta_warmup_steps >= 0
             and (self.meta_warmup_steps < 1 or float(self.meta_warmup_steps).is_integer()),
             "a step count (an integer >= 1), or a share of the run in [0, 1) such as 0.25"),
            ("meta_batch_size", self.meta_batch_size >= 1, "an integer >= 1"),
            ("meta_inner_learning_rate", self.meta_inner_learning_rate is None or self.meta_inner_learning_rate > 0,
             "positive or None (use the PRM learning rate)"),
            ("lora_r", self.lora_r >= 1, "an integer >= 1 (pass a model without LoRA to train it fully)"),
            ("lora_dropout", 0.0 <= self.lora_dropout < 1.0, "in [0, 1)"),
            ("model_init_kwargs", self.model_init_kwargs is None or isinstance(self.model_init_kwargs, dict),
             "a dict (JSON on the command line) such as {\"dtype\": \"bfloat16\"}"),
            ("remove_unused_columns", not self.remove_unused_columns,
             "False: the collator needs the raw 'prompt' and 'steps' columns"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise ValueError(
                    f"FunctionStepPRMConfig.{name}={getattr(self, name)!r} is invalid; set it to {expected}."
                )
        if self.hypergradient == "neumann" and self.meta_unroll != "sgd":
            raise ValueError(
                f"hypergradient='neumann' unrolls no inner step, so meta_unroll={self.meta_unroll!r} has nothing to "
                "shape; set meta_unroll='sgd' or use hypergradient='darts'."
            )

    def meta_warmup(self, max_steps: int) -> int:
        """Warm-up optimizer steps in a run of ``max_steps``: ``meta_warmup_steps`` when it is a count (>= 1), else
        that share of the run rounded up, as `TrainingArguments.get_warmup_steps` reads ``warmup_steps``."""
        share = self.meta_warmup_steps
        return int(share) if share >= 1 else math.ceil(max_steps * share)

    def prm_fields(self) -> dict[str, Any]:
        """The fields shared with `prm.PRMConfig` (`PRM_FIELDS`), by name: ``FunctionStepPRM.from_backbone(...,
        **args.prm_fields())`` builds a PRM configured as this run trains it."""
        return {name: getattr(self, name) for name in PRM_FIELDS}

    def lora_config(self):
        """The `peft.LoraConfig` of the ``lora_*`` fields (``target_modules=None``: the backbone's q/k/v/o)."""
        from peft import LoraConfig

        return LoraConfig(r=self.lora_r, lora_alpha=self.lora_alpha, lora_dropout=self.lora_dropout,
                          target_modules=self.lora_target_modules, bias="none")
