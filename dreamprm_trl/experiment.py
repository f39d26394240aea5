"""The test-time-scaling experiment: label, train every PRM variant, rerank held-out candidates, one table.

This is the logic behind ``accelerate launch examples/train.py`` and ``benchmarks/bench_quality.py`` (both only
parse arguments and call :func:`run_experiment`). With no arguments it runs offline on bundled ClassEval
(``--dataset classeval``): class-level programs whose methods are the steps (5 per program on average), 5 LLMs'
candidates per task, Monte-Carlo step labels from :class:`~dreamprm_trl.labeling.generators.PoolGenerator`, and
method-level tests that give every step its true label. ``--dataset humaneval`` (CodeGen-16B candidates, almost all
single-function programs) and ``--dataset both`` stay available.

Data flow (the paper's, and the same for every variant):

* problems are split three ways, disjoint: **held-out** problems (reranked, never trained on), **trajectory**
  problems (``trajectories`` candidates each, Monte-Carlo labelled) and **meta** problems (their
  ``num_candidates`` complete programs with clean unit-test verdicts);
* trained rows are the trajectories' **non-final prefixes** with their MC labels (a complete program's verdict is
  clean and never a learnable label);
* label correction and reweighting use the meta programs as the meta set (the trainer warms up on both); the
  variants without a meta step train on the prefixes plus the meta programs (final step labelled with its
  verdict), so every PRM sees the same problems, trajectories and rollouts; the ORM trains on the same
  trajectories' and meta programs' verdicts, one step per program;
* line-as-step uses :func:`~dreamprm_trl.steps.split_line_chunks`: as many line-aligned steps as the program has
  functions, so it gets the same number of labelled prefixes and the same rollout budget; only where the cuts
  fall differs.

The table: reranked pass@1 of each row on the held-out problems, with its CI, its paired difference to random,
and to "parses, then random" (drop candidates that do not parse, pick at random): the floor any learnt scorer
must clear. The public-test rows filter with the statement's examples (none in ClassEval: they equal random
there). On ClassEval, the MAE and AUROC of the MC labels and of the corrected labels against method-level truth
are reported in the same run.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from .config import FunctionStepPRMConfig
from .correction import split_by_task
from .sandbox import SandboxedExecutor
from .sandbox.limits import DEFAULT_MEMORY_MB, DEFAULT_TIMEOUT
from .labeling import label_final, label_steps, step_ground_truth
from .labeling.generators import PoolGenerator, make_generator
from .metrics import bootstrap_ci, label_agreement, per_problem_reranked, rerank_metrics, scaling_curve
from .modeling import FunctionStepPRM
from .rerank import Ranked, public_test_verdicts, ranking_values
from .problems import Problem, load_bundled_classeval_candidates, load_candidates, load_problems
from .steps import get_splitter, parses
from .trainer import FunctionStepPRMTrainer

logger = logging.getLogger(__name__)

__all__ = ["ExperimentArguments", "VARIANTS", "run_experiment", "format_table", "split_problems", "DATASETS"]

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
    split), ``minilm`` (the packaged MiniLM encoder with LoRA) or a Hub id / local path (LoRA).
    """

    dataset: str = field(default="classeval", metadata={"help": "Bundled data to run on.", "choices": DATASETS})
    problems: str | None = field(
        default=None, metadata={"help": "A problems file/dir (problems.load_problems) instead of --dataset."}
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
    backbone: str = field(default="tiny-causal", metadata={"help": "'tiny-causal', 'minilm' or a Hub id / path."})
    tiny_hidden_size: int = field(default=128, metadata={"help": "tiny-causal: hidden size."})
    tiny_layers: int = field(default=2, metadata={"help": "tiny-causal: decoder layers."})
    tiny_vocab_size: int = field(default=2048, metadata={"help": "tiny-causal: byte-level BPE vocabulary."})
    tiny_pretrain_epochs: int = field(
        default=0,
        metadata={"help": "tiny-causal: epochs of language modelling on the training split's programs first."},
    )
    use_lora: bool | None = field(
        default=None, metadata={"help": "LoRA on the backbone; default: yes for pretrained, no for tiny-causal."}
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


# ----------------------------------------------------------------------------------------------------- data
def split_problems(task_ids: Sequence[str], eval_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Deterministic split of distinct problems ``(kept, held_out)``: `correction.split_by_task`'s seeded hash rule."""
    if not 0.0 < eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction}.")
    kept, held = split_by_task(task_ids, eval_fraction, seed)
    return [task_ids[i] for i in kept], [task_ids[i] for i in held]


def _classeval_pool() -> dict[str, list[str]]:
    """Bundled ClassEval candidates interleaved across the 5 models (the first N mix every model)."""
    models = ("ChatGPT", "GPT-4", "CodeGeeX", "ChatGLM", "Vicuna")
    per_model = [load_bundled_classeval_candidates([m]) for m in models]
    tasks = {t for pool in per_model for t in pool}
    out = {}
    for t in sorted(tasks):
        groups = [pool.get(t, []) for pool in per_model]
        out[t] = [g[i] for i in range(max(map(len, groups))) for g in groups if i < len(g)]
    return out


def _load(args: ExperimentArguments) -> tuple[list[Problem], dict[str, list[str]]]:
    """Problems and candidate pools of ``args.dataset`` (or of ``--problems/--candidates``)."""
    if args.problems is not None:
        sources = [(load_problems(args.problems), args.candidates or args.problems)]
    else:
        names = ["classeval", "humaneval"] if args.dataset == "both" else [args.dataset]
        sources = [(load_problems(n), n) for n in names]
    problems, pool = [], {}
    for probs, cand in sources:
        probs = probs[: args.max_problems] if args.max_problems else probs
        pool.update(_classeval_pool() if cand == "classeval" else load_candidates(cand, probs))
        problems += probs
    missing = {p.task_id for p in problems if len(pool.get(p.task_id, [])) < 2}
    if missing:
        logger.warning("%d problems have fewer than 2 candidates and are left out: %s", len(missing),
                       sorted(missing)[:5])
    problems = [p for p in problems if p.task_id not in missing]
    return problems, {p.task_id: pool[p.task_id][: args.pool_size] for p in problems}


def _execution_allowed(args: ExperimentArguments) -> bool:
    """Opt-in rule: the bundled candidates (shipped and run by this project's tests) may run by default; anything
    else needs ``--allow_code_execution`` or ``HF_ALLOW_CODE_EVAL=1`` (checked by the executor)."""
    if args.allow_code_execution is not None:
        return args.allow_code_execution
    return args.candidates is None and args.problems is None and args.generator == "pool"


def three_way_split(task_ids: Sequence[str], args: ExperimentArguments) -> dict[str, list[str]]:
    """Disjoint ``eval`` (held out), ``trajectory`` (MC-labelled) and ``meta`` (complete programs) problems."""
    train, held = split_problems(task_ids, args.eval_fraction, args.split_seed)
    if args.dev_split:
        train, held = split_problems(train, args.eval_fraction, args.split_seed + 1)
    if len(train) < 2:
        raise ValueError(f"Only {len(train)} training problems; use more problems (--max_problems) or a smaller "
                         "--eval_fraction.")
    trajectory, meta = split_problems(train, args.meta_fraction, args.split_seed + 2)
    return {"eval": held, "trajectory": trajectory, "meta": meta}


def build_datasets(args: ExperimentArguments, problems: list[Problem], pool: dict[str, list[str]],
                   split: dict[str, list[str]], executor: SandboxedExecutor, need: set[str]) -> dict[str, Any]:
    """Label once what the requested variants need, through the resumable cache: the verdicts of all N
    candidates of every problem, and MC labels of the trajectory problems' first ``trajectories`` parsing candidates
    for each step splitter in use (same trajectories, same rollouts per prefix, same number of prefixes)."""
    groups = {t: progs[: args.num_candidates] for t, progs in pool.items()}
    cache = Path(args.cache_dir)
    out: dict[str, Any] = {"final": label_final(problems, groups, executor=executor, cache_dir=cache / "final")}
    traj_ids = set(split["trajectory"])
    traj_problems = [p for p in problems if p.task_id in traj_ids]
    # The same trajectories for every splitter: the first candidates that parse (function steps need a parse).
    trajectories = {t: [c for c in groups[t] if parses(c)][: args.trajectories] for t in split["trajectory"]}
    out["trajectories"] = trajectories
    for name in sorted({VARIANTS[m].splitter for m in need if VARIANTS[m].labels == "mc"}):
        splitter = get_splitter(name)
        generator = (PoolGenerator(pool, splitter=splitter, seed=args.split_seed) if args.generator == "pool"
                     else make_generator(args.generator, model=args.generator_model, base_url=args.base_url))
        out[f"mc_{name}"] = label_steps(
            traj_problems, trajectories, generator, rollouts=args.rollouts, temperature=args.rollout_temperature,
            executor=executor, cache_dir=cache / f"mc_{name}", splitter=splitter, source=name,
        )
    return out


def prefix_rows(mc: Any) -> Any:
    """The trained rows of a step-splitting variant: each trajectory cut before its final step, with the MC labels
    of its non-final prefixes (the final verdict is clean, never a learnable label). Trajectories with no
    labelled prefix (one step, or no rollouts) give no row."""
    cut = mc.map(lambda r: {"steps": r["steps"][:-1], "mc_labels": r["mc_labels"][:-1]})
    return cut.filter(lambda r: any(v is not None for v in r["mc_labels"]))


def complete_rows(final: Any, keep: Callable[[dict], bool], splitter: str) -> list[dict]:
    """Complete programs (rows of ``final`` for which ``keep(row)``) with their verdicts, cut with ``splitter``:
    ``{"task_id", "prompt", "steps", "passed"}``."""
    split = get_splitter(splitter)
    return [{"task_id": r["task_id"], "prompt": r["prompt"], "steps": [s.text for s in split(r["code"])],
             "passed": bool(r["passed"])} for r in final if r["code"] and keep(r)]


def variant_data(name: str, args: ExperimentArguments, data: dict[str, Any],
                 split: dict[str, list[str]]) -> tuple[Any, Any]:
    """``(train_dataset, meta_dataset)`` of variant ``name`` (see the module docstring for the data flow)."""
    from datasets import Dataset

    variant = VARIANTS[name]
    meta_ids = set(split["meta"])
    meta = complete_rows(data["final"], lambda r: r["task_id"] in meta_ids, variant.splitter)
    as_final = [{"task_id": r["task_id"], "prompt": r["prompt"], "steps": r["steps"],
                 "mc_labels": [None] * (len(r["steps"]) - 1) + [float(r["passed"])]} for r in meta]
    if variant.labels == "final":
        trajectories = {(t, c) for t, codes in data["trajectories"].items() for c in codes}
        own = complete_rows(data["final"], lambda r: (r["task_id"], r["code"]) in trajectories, "program")
        own = [{**r, "mc_labels": [float(r.pop("passed"))]} for r in own]
        return Dataset.from_list(own + as_final), None
    prefixes = prefix_rows(data[f"mc_{variant.splitter}"]).select_columns(["task_id", "prompt", "steps", "mc_labels"])
    if variant.meta_method == "none":
        return Dataset.from_list(prefixes.to_list() + as_final), None
    return prefixes, Dataset.from_list(meta)


# ----------------------------------------------------------------------------------------------------- model
def build_backbone(
    args: ExperimentArguments, config: FunctionStepPRMConfig, corpus: Sequence[str]
) -> tuple[Any, Any]:
    """The ``(body, tokenizer)`` every variant starts from, built once (seeded); each variant trains a deep copy.

    ``tiny-causal`` trains its byte-level tokenizer on the training split's programs and, with
    ``tiny_pretrain_epochs``, first learns them as a language model. A Hub id or path is returned as is and
    loaded per variant.
    """
    import torch

    from .backbones import load_minilm, pretrain_causal_lm, tiny_causal_backbone, train_bytelevel_tokenizer

    torch.manual_seed(config.seed)
    if args.backbone == "tiny-causal":
        tokenizer = train_bytelevel_tokenizer(corpus, vocab_size=args.tiny_vocab_size)
        body, tokenizer = tiny_causal_backbone(
            tokenizer, hidden_size=args.tiny_hidden_size, num_layers=args.tiny_layers,
            max_position_embeddings=max(2048, config.max_length), seed=config.seed,
            attn_implementation="eager" if config.hypergradient == "exact" else "sdpa",
        )
        if args.tiny_pretrain_epochs:
            pretrain_causal_lm(body, tokenizer, corpus, epochs=args.tiny_pretrain_epochs,
                               max_length=config.max_length, seed=config.seed, progress=not config.disable_tqdm)
        return body, tokenizer
    if args.backbone == "minilm":
        return load_minilm()
    return args.backbone, None


def build_prm(args: ExperimentArguments, config: FunctionStepPRMConfig, backbone: tuple[Any, Any]) -> FunctionStepPRM:
    """A fresh PRM on a copy of ``backbone`` (LoRA by default on pretrained backbones, full training on tiny-causal)."""
    import torch

    torch.manual_seed(config.seed)
    use_lora = args.use_lora if args.use_lora is not None else args.backbone != "tiny-causal"
    lora = config.lora_config() if use_lora else None
    common = dict(step_token=config.step_token, aggregation=config.score_aggregation, loss_type=config.label_loss,
                  label_smoothing=config.label_smoothing, max_length=config.max_length)
    body, tokenizer = backbone
    if isinstance(body, str):
        return FunctionStepPRM.from_backbone(body, lora_config=lora, **common)
    return FunctionStepPRM.from_backbone(copy.deepcopy(body), tokenizer, lora_config=lora, **common)


def train_variant(name: str, args: ExperimentArguments, config: FunctionStepPRMConfig, rows: Any, meta: Any,
                  backbone: tuple[Any, Any]) -> tuple[FunctionStepPRM, FunctionStepPRMTrainer]:
    """Train the variant ``name`` of `VARIANTS` from a fresh PRM on its `variant_data` ``(rows, meta)``."""
    variant = VARIANTS[name]
    run_config = dataclasses.replace(config, meta_method=variant.meta_method,
                                     output_dir=os.path.join(config.output_dir, name))
    prm = build_prm(args, run_config, backbone)
    prm.prm_config.step_splitter = variant.splitter  # read by rerank.saved_splitter
    trainer = FunctionStepPRMTrainer(prm, run_config, train_dataset=rows, meta_dataset=meta)
    trainer.train()
    return prm, trainer


# ----------------------------------------------------------------------------------------------------- evaluation
def filtered(scores: list[list[float]], keep: list[list[bool | None]]) -> list[list[float]]:
    """Ranking values of "filter, then score": candidates with ``keep`` False rank below the others, ``scores``
    order each group (the rule of `rerank` with public tests)."""
    return [ranking_values([Ranked(i, "", s, public_pass=k) for i, (s, k) in enumerate(zip(ss, ks))])
            for ss, ks in zip(scores, keep)]


def score_groups(prm: FunctionStepPRM, problems: list[Problem], groups: list[list[str]], splitter: Callable,
                 aggregation: str | None, batch_size: int) -> list[list[float]]:
    """`FunctionStepPRM.program_scores` of every candidate, grouped by problem."""
    pairs = [(p.prompt, code) for p, g in zip(problems, groups) for code in g]
    scores = iter(prm.program_scores(pairs, aggregation, batch_size, splitter=splitter))
    return [[next(scores) for _ in g] for g in groups]


def label_quality(rows: Any, corrected: list[list[float | None]] | None, by_id: dict[str, Problem]
                  ) -> dict[str, Any] | None:
    """MAE, AUROC and wrong-side rate of the MC labels (and of the corrected labels) of the trained prefixes
    against method-level truth (`labeling.step_ground_truth`), on the problems with per-method tests (ClassEval).

    ``rows`` are `prefix_rows` of the function-step MC labels (with ``code`` and ``per_test``), aligned with
    ``corrected`` (``trainer.corrected_labels()``)."""
    noisy, fixed, truth = [], [], []
    for i, row in enumerate(rows):
        problem = by_id[row["task_id"]]
        if problem.tests is None or problem.tests.kind != "unittest" or not problem.tests.test_classes:
            continue
        try:
            gt = step_ground_truth(problem, row["code"], row["per_test"])[:-1]
        except ValueError:  # no per-test verdicts (a program the executor skipped)
            continue
        for k, (y, g) in enumerate(zip(row["mc_labels"], gt)):
            if y is not None:
                noisy.append(y)
                truth.append(g)
                fixed.append(corrected[i][k] if corrected is not None else y)
    if not truth:
        return None
    out = {"num_steps": len(truth), "truth_positive_rate": sum(truth) / len(truth),
           "mc": label_agreement(noisy, truth)}
    if corrected is not None:
        out["corrected"] = label_agreement(fixed, truth)
    return out


def _eval_groups(data: dict[str, Any], problems: list[Problem], eval_ids: list[str]):
    by_task: dict[str, tuple[list[str], list[bool]]] = {}
    for row in data["final"]:
        codes, passed = by_task.setdefault(row["task_id"], ([], []))
        codes.append(row["code"])
        passed.append(bool(row["passed"]))
    held = set(eval_ids)
    eval_problems = [p for p in problems if p.task_id in held and p.task_id in by_task]
    return eval_problems, [by_task[p.task_id][0] for p in eval_problems], [by_task[p.task_id][1] for p in eval_problems]


def run_experiment(args: ExperimentArguments, config: FunctionStepPRMConfig) -> dict[str, Any]:
    """Label, train each requested variant, evaluate all on the held-out problems; write and return the results."""
    start = time.time()
    names = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in names if m not in VARIANTS]
    if unknown:
        raise ValueError(f"Unknown methods {unknown} in --methods; choose from {list(VARIANTS)}.")
    problems, pool = _load(args)
    split = three_way_split([p.task_id for p in problems], args)
    executor = SandboxedExecutor(timeout=args.exec_timeout, memory_mb=args.exec_memory_mb, workers=args.exec_workers,
                                 allow_code_execution=_execution_allowed(args))
    with config.main_process_first(desc="labelling"):  # the main process fills the cache, the others read it
        data = build_datasets(args, problems, pool, split, executor, set(names))
    labelled = time.time()

    eval_problems, groups, passed = _eval_groups(data, problems, split["eval"])
    public = public_test_verdicts([p.public_tests for p in eval_problems], groups, executor)
    parse_ok = [[parses(c) for c in g] for g in groups]
    train_ids = split["trajectory"] + split["meta"]
    backbone = build_backbone(args, config, [c for t in train_ids for c in pool[t]])

    flat = [[0.0] * len(g) for g in groups]
    ranked: dict[str, list[list[float]]] = {"random": flat, FLOOR: filtered(flat, parse_ok)}
    labels = {"random": "random pick (mean pass@1)", FLOOR: "parses, then random pick"}
    quality, skipped = None, {}
    for name in names:
        variant = VARIANTS[name]
        rows, meta = variant_data(name, args, data, split)
        if len(rows) == 0:  # e.g. HumanEval: single-function trajectories have no non-final prefix to learn from
            skipped[name] = "no labelled non-final prefix (single-step trajectories)"
            logger.warning("Variant %r skipped: %s; use --dataset classeval or both.", name, skipped[name])
            continue
        prm, trainer = train_variant(name, args, config, rows, meta, backbone)
        ranked[name] = score_groups(prm, eval_problems, groups, get_splitter(variant.splitter), None,
                                    config.per_device_eval_batch_size)
        labels[name] = variant.label
        if name == MAIN_VARIANT:
            quality = label_quality(prefix_rows(data["mc_function"]), trainer.corrected_labels(),
                                    {p.task_id: p for p in problems})
            trainer.accelerator.unwrap_model(trainer.model).config.step_splitter = variant.splitter  # rerank reads it
            trainer.save_model(config.output_dir)
            if config.push_to_hub:
                trainer.push_to_hub()
    if MAIN_VARIANT in ranked:
        ranked["parses_dreamprm"] = filtered(ranked[MAIN_VARIANT], parse_ok)
        labels["parses_dreamprm"] = "parses, then DreamPRM-Code"
    ranked["public_random"] = filtered(flat, public)
    labels["public_random"] = "public-test filter, then random pick"
    if MAIN_VARIANT in ranked:
        ranked["public_dreamprm"] = filtered(ranked[MAIN_VARIANT], public)
        labels["public_dreamprm"] = "public-test filter, then DreamPRM-Code"

    out = _results(args, ranked, labels, passed)
    out["label_quality"] = quality
    out["eval"] = {"task_ids": [p.task_id for p in eval_problems], "passed": passed, "rankings": ranked,
                   "public_pass": public, "parses": parse_ok}
    out["setup"] = {
        "dataset": args.problems or args.dataset, "split": "dev" if args.dev_split else "held-out",
        "num_trajectory_problems": len(split["trajectory"]), "num_meta_problems": len(split["meta"]),
        "num_eval_problems": len(eval_problems), "candidates_per_problem": args.num_candidates,
        "trajectories_per_problem": args.trajectories, "rollouts": args.rollouts, "backbone": args.backbone,
        "skipped_variants": skipped,
        "public_test_contradictions": _contradictions(eval_problems, executor),
        "labelling_seconds": round(labelled - start, 1), "seconds": round(time.time() - start, 1),
        "arguments": dataclasses.asdict(args),
    }
    out["title"] = _title(out["setup"])
    if config.process_index == 0:
        _write(out, args.results_dir)
    return out


def _contradictions(problems: list[Problem], executor: SandboxedExecutor) -> int:
    """Problems whose reference solution (``metadata["canonical_solution"]``, HumanEval) fails the public examples:
    prompt examples that contradict the hidden tests, kept as public tests and counted here."""
    jobs = [(p.prompt + p.metadata["canonical_solution"], p.public_tests) for p in problems
            if p.public_tests is not None and (p.metadata or {}).get("canonical_solution")]
    return sum(not r.passed for r in executor.run_many(jobs)) if jobs else 0


def _results(args: ExperimentArguments, ranked: dict, labels: dict, passed: list[list[bool]]) -> dict[str, Any]:
    """Table rows (value, CI, paired difference to random and to the "parses, then random" floor), paired
    comparisons and scaling curves of every ranking."""
    def paired(a: str, b: str) -> dict:
        diff = per_problem_reranked(ranked[a], passed) - per_problem_reranked(ranked[b], passed)
        return {"diff": float(diff.mean()), "ci": bootstrap_ci(diff, args.n_bootstrap, args.split_seed)}

    rows = []
    for key, scores in ranked.items():
        m = rerank_metrics(scores, passed, n_bootstrap=args.n_bootstrap, seed=args.split_seed)
        metric = "mean_pass@1" if key == "random" else "reranked_pass@1"
        rows.append(_row(key, labels[key], m, metric))
        if key not in ("random", FLOOR):
            rows[-1]["floor_diff"] = paired(key, FLOOR)
    rows.append(_row("oracle", f"oracle pass@{args.num_candidates}", m, "oracle_pass@N"))
    comparisons = [{"label": f"{a} minus {b}", "a": a, "b": b, **paired(a, b)}
                   for a, b in COMPARISONS if a in ranked and b in ranked]
    return {"table": rows, "comparisons": comparisons,
            "curves": {k: scaling_curve(v, passed) for k, v in ranked.items()}}


def _row(key: str, label: str, m: dict, metric: str) -> dict:
    """One table row read off `rerank_metrics` output: ``metric`` with its CI; rankings also get the paired
    difference to random."""
    row: dict[str, Any] = {"key": key, "label": label, "value": m[metric], "ci": None, "diff": None,
                           "floor_diff": None}
    if f"{metric}_ci_low" in m:
        row["ci"] = (m[f"{metric}_ci_low"], m[f"{metric}_ci_high"])
    if metric == "reranked_pass@1" and "reranked_minus_random_ci_low" in m:
        ci = (m["reranked_minus_random_ci_low"], m["reranked_minus_random_ci_high"])
        row["diff"] = (m["reranked_minus_random"], ci)
    row["metrics"] = {k: v for k, v in m.items()
                      if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v))}
    return row


def _diff_cell(d: float, lo: float, hi: float) -> str:
    return f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]" + (" *" if lo > 0 or hi < 0 else "")


def format_table(rows: list[dict], title: str = "", comparisons: Sequence[dict] = (),
                 label_quality: dict | None = None) -> str:
    """Markdown: each row's pass@1 with its 95% CI and its paired differences to random and to "parses, then
    random"; then the paired comparisons and the label-quality table."""
    lines = [title] if title else []
    lines += ["| method | pass@1 [95% CI] | minus random [95% CI] | minus parses-then-random [95% CI] |",
              "|---|---|---|---|"]
    for r in rows:
        ci = f" [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]" if r.get("ci") else ""
        diff = _diff_cell(r["diff"][0], *r["diff"][1]) if r.get("diff") else ""
        floor = _diff_cell(r["floor_diff"]["diff"], *r["floor_diff"]["ci"]) if r.get("floor_diff") else ""
        lines.append(f"| {r['label']} | {r['value']:.3f}{ci} | {diff} | {floor} |")
    lines += ["", "`*`: the 95% CI of the difference excludes 0 (paired bootstrap over problems)."]
    if comparisons:
        lines += ["", "| paired comparison | difference [95% CI] |", "|---|---|"]
        lines += [f"| {c['label']} | {_diff_cell(c['diff'], *c['ci'])} |" for c in comparisons]
    if label_quality:
        lines += ["", f"Label quality on {label_quality['num_steps']} trained non-final ClassEval steps against "
                      f"method-level truth (positive rate {label_quality['truth_positive_rate']:.3f}):", "",
                  "| labels | MAE | AUROC | wrong side of 0.5 |", "|---|---|---|---|"]
        for key, name in (("mc", "Monte-Carlo (trained on)"), ("corrected", "after label correction")):
            if key in label_quality:
                q = label_quality[key]
                lines.append(f"| {name} | {q['mae']:.3f} | {q['auroc']:.3f} | {q['wrong_side']:.3f} |")
    return "\n".join(lines)


def _write(out: dict, results_dir: str) -> None:
    path = Path(results_dir)
    path.mkdir(parents=True, exist_ok=True)
    (path / "results.json").write_text(json.dumps(out, indent=2, default=str) + "\n")
    (path / "results.md").write_text(render(out) + "\n")


def render(out: dict) -> str:
    """The Markdown report of a `run_experiment` result."""
    return format_table(out["table"], out["title"], out["comparisons"], out.get("label_quality"))


def _title(s: dict) -> str:
    return (f"Dataset {s['dataset']}; {s['split']} problems: {s['num_eval_problems']} ({s['candidates_per_problem']} "
            f"candidates each); trajectory problems: {s['num_trajectory_problems']} ({s['trajectories_per_problem']} "
            f"trajectories, {s['rollouts']} rollouts per prefix); meta problems: {s['num_meta_problems']}; "
            f"backbone: {s['backbone']}; public examples contradicting the hidden tests: "
            f"{s['public_test_contradictions']}; {s['seconds']} s ({s['labelling_seconds']} s labelling).\n")
