"""What an experiment runs: its arguments (`ExperimentArguments`), the trained variants (`VARIANTS`) and the
demo's training defaults. See `dreamprm_trl.scripts.experiment` for the data flow."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dreamprm_trl.sandbox.limits import DEFAULT_MEMORY_MB, DEFAULT_TIMEOUT

DATASETS = ("classeval", "humaneval", "both")


@dataclass(frozen=True)
class Variant:
    """One trained row of the table: how programs are cut into steps (a `steps.SPLITTERS` name), where labels
    come from (``"final"`` verdicts or ``"mc"`` prefixes), the meta method."""

    label: str
    splitter: str
    labels: str
    meta_method: str


VARIANTS: dict[str, Variant] = {
    "orm": Variant("ORM (whole-program verdicts)", "program", "final", "none"),
    "line": Variant("PRM, line-as-step (same prefix count)", "line_chunks", "mc", "none"),
    "function": Variant("PRM, function-as-step, no correction", "function", "mc", "none"),
    "reweighting": Variant("PRM, function-as-step, sample reweighting", "function", "mc", "sample_reweighting"),
    "dreamprm": Variant("DreamPRM-Code (function-as-step + label correction)", "function", "mc", "label_correction"),
}
MAIN_VARIANT = "dreamprm"
FLOOR = "parses_random"
#: Paired comparisons reported under the table: what label correction, steps and the hybrids add.
COMPARISONS = [("dreamprm", "function"), ("dreamprm", "reweighting"), ("dreamprm", "orm"), ("function", "line"),
               ("parses_dreamprm", "parses_random"), ("public_dreamprm", "public_random")]

#: Training defaults of the embedded demo (2 CPU cores, minutes); every one is a flag of `FunctionStepPRMConfig`.
DEMO_TRAINING_DEFAULTS: dict[str, Any] = {
    "output_dir": "outputs/dreamprm-code",
    "num_train_epochs": 1,
    "learning_rate": 1e-3,
    "per_device_train_batch_size": 8,
    "per_device_eval_batch_size": 16,
    "max_length": 1024,
    "logging_steps": 20,
    "save_strategy": "no",
    "report_to": "none",
    "meta_batch_size": 8,
    "meta_warmup_steps": 10,
    "meta_interval": 4,
    "seed": 0,
}

#: What ``--quick`` changes (a CI-sized smoke run: minutes, numbers too noisy to read).
QUICK: dict[str, Any] = {"max_problems": 12, "num_candidates": 4, "trajectories": 2, "rollouts": 1,
                         "n_bootstrap": 200, "tiny_hidden_size": 32, "tiny_vocab_size": 1024}


@dataclass
class ExperimentArguments:
    """What to label, train and evaluate. The PRM's own training arguments are a `FunctionStepPRMConfig`.

    > Data

    dataset: bundled ``classeval`` (multi-step, the default), ``humaneval`` or ``both``; problems / candidates:
    your files instead. num_candidates: candidates per problem that are reranked and form the meta set (N);
    trajectories: candidates per trajectory problem that are MC-labelled; pool_size: candidates per problem the
    `PoolGenerator` may graft from. eval_fraction / meta_fraction / split_seed: the three-way split by problem.
    quick: a reduced smoke run (`QUICK`).

    > Labelling

    generator: ``pool`` (offline), ``openai`` or ``transformers`` (with generator_model / base_url).
    rollouts: Monte-Carlo completions per prefix (every step-splitting variant gets the same).

    > Model

    backbone: ``tiny-causal`` (a small Qwen2 from a config with a byte-level tokenizer trained on the training
    split), ``minilm`` (the packaged MiniLM encoder with LoRA) or a Hub id / local path (LoRA). The backbone alone
    decides LoRA vs full fine-tuning: ``tiny-causal`` is built from scratch and trained fully, every pretrained
    backbone gets LoRA with `FunctionStepPRMConfig`'s ``lora_*`` fields.
    """

    dataset: str = field(default="classeval", metadata={"help": "Bundled data to run on.", "choices": DATASETS})
    problems: str | None = field(
        default=None, metadata={"help": "A problems file/dir (labeling.load_problems) instead of --dataset."}
    )
    candidates: str | None = field(
        default=None, metadata={"help": "A JSONL of candidates (with --problems) instead of the bundled ones."}
    )
    num_candidates: int = field(default=8, metadata={"help": "Candidates per problem to rerank / meta set (N)."})
    trajectories: int = field(default=4, metadata={"help": "Candidates per trajectory problem to MC-label."})
    pool_size: int = field(default=25, metadata={"help": "Candidates per problem the PoolGenerator may graft from."})
    max_problems: int | None = field(
        default=None, metadata={"help": "Use only the first K problems of each dataset (smoke runs)."}
    )
    eval_fraction: float = field(default=0.4, metadata={"help": "Share of problems held out for evaluation."})
    meta_fraction: float = field(
        default=0.4, metadata={"help": "Share of the training problems whose complete programs form the meta set."}
    )
    split_seed: int = field(default=0, metadata={"help": "Seed of the split by problem."})
    dev_split: bool = field(
        default=False,
        metadata={"help": "Model selection: drop the held-out problems and split the training problems again "
                          "(seed + 1) into train and dev; the table is then on dev."},
    )
    quick: bool = field(default=False, metadata={"help": f"Reduced smoke run: {QUICK}."})
    methods: str = field(
        default="orm,line,function,reweighting,dreamprm",
        metadata={"help": f"Comma-separated variants to train, from {list(VARIANTS)}."},
    )
    generator: str = field(default="pool", metadata={"help": "'pool' (offline), 'openai' or 'transformers'."})
    generator_model: str | None = field(default=None, metadata={"help": "Model name/path for openai|transformers."})
    base_url: str | None = field(default=None, metadata={"help": "OpenAI-compatible server URL (generator=openai)."})
    rollouts: int = field(default=2, metadata={"help": "MC completions per prefix (paper: 16)."})
    rollout_temperature: float = field(default=0.3, metadata={"help": "Sampling temperature of rollouts (paper: 0.3)."})
    allow_code_execution: bool | None = field(
        default=None,
        metadata={"help": "Run model-written programs in the sandbox (or set HF_ALLOW_CODE_EVAL=1). Default: allowed "
                          "for the candidates shipped with the package, required for any other candidates."},
    )
    exec_timeout: float = field(default=DEFAULT_TIMEOUT, metadata={"help": "Seconds per test case in the sandbox."})
    exec_memory_mb: int = field(default=DEFAULT_MEMORY_MB, metadata={"help": "Memory limit per program (MiB)."})
    exec_workers: int | None = field(default=None, metadata={"help": "Programs run in parallel (default: CPU count)."})
    cache_dir: str = field(default="outputs/label_cache", metadata={"help": "Resumable labelling cache."})
    backbone: str = field(
        default="tiny-causal", metadata={"help": "'tiny-causal' (full training), or LoRA on 'minilm' / a Hub id / path."}
    )
    tiny_hidden_size: int = field(default=128, metadata={"help": "tiny-causal: hidden size."})
    tiny_layers: int = field(default=2, metadata={"help": "tiny-causal: decoder layers."})
    tiny_vocab_size: int = field(default=2048, metadata={"help": "tiny-causal: byte-level BPE vocabulary."})
    tiny_pretrain_epochs: int = field(
        default=0,
        metadata={"help": "tiny-causal: epochs of language modelling on the training split's programs first."},
    )
    results_dir: str = field(default="outputs/results", metadata={"help": "Where the table (JSON, Markdown) goes."})
    n_bootstrap: int = field(default=1000, metadata={"help": "Bootstrap resamples for the CIs."})

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"--dataset {self.dataset!r} is not one of {DATASETS}.")
        if self.candidates is not None and self.problems is None:
            raise ValueError("--candidates needs --problems (the problems those candidates answer).")
        if self.trajectories > self.num_candidates:
            raise ValueError(f"--trajectories {self.trajectories} exceeds --num_candidates {self.num_candidates}.")
        if self.quick:
            for name, value in QUICK.items():
                setattr(self, name, value)

