"""The test-time-scaling experiment: label, train every PRM variant, rerank held-out candidates, one table.

This is the logic behind ``accelerate launch examples/train.py`` and ``benchmarks/bench_quality.py`` (both only
parse arguments and call :func:`run_experiment`). With no arguments it runs offline on the bundled data: the
CodeGen-16B candidates for HumanEval (``dreamprm_trl/data``), Monte-Carlo step labels from
:class:`~dreamprm_trl.generation.PoolGenerator`, a split by problem, and every row of the results table computed in
the same run on the same held-out candidates:

========================================================  ==========================================================
row                                                       what is trained / how candidates are picked
========================================================  ==========================================================
random pick (mean pass@1)                                 expected pass rate of a uniformly random candidate
ORM (whole-program labels only)                           the same PRM, one step per program, final labels only
PRM, line-as-step                                         one step per logical line, MC labels, no correction
PRM, function-as-step, no correction                      one step per function, MC labels
PRM, function-as-step, sample reweighting                 + a learnable weight per row (the authors' code)
DreamPRM-Code (function-as-step + label correction)       + learnable step labels (the paper)
public-test filter, then random pick                      candidates passing the statement's examples, random pick
public-test filter, then DreamPRM-Code                    the same groups, ordered by the DreamPRM-Code score
oracle pass@N                                             a pick that is right whenever any candidate is
========================================================  ==========================================================
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from .config import FunctionStepPRMConfig
from .execution import DEFAULT_MEMORY_MB, DEFAULT_TIMEOUT, SandboxedExecutor
from .generation import PoolGenerator, make_generator
from .labeling import BUNDLED, label_final, label_steps, load_candidates, load_problems
from .metrics import bootstrap_ci, per_problem_reranked, rerank_metrics, scaling_curve
from .modeling import FunctionStepPRM
from .rerank import Ranked, public_test_verdicts, ranking_values
from .steps import split_lines, split_program, split_steps
from .tasks import Problem
from .trainer import FunctionStepPRMTrainer

logger = logging.getLogger(__name__)

__all__ = ["ExperimentArguments", "VARIANTS", "run_experiment", "format_table", "split_problems"]


@dataclass(frozen=True)
class Variant:
    """One trained row of the table: how programs are cut into steps, where labels come from, the meta method."""

    label: str
    splitter: Callable[[str], list]
    labels: str  # "final" (whole-program verdicts) or "mc" (Monte-Carlo step labels)
    meta_method: str


VARIANTS: dict[str, Variant] = {
    "orm": Variant("ORM (whole-program labels only)", split_program, "final", "none"),
    "line": Variant("PRM, line-as-step", split_lines, "mc", "none"),
    "function": Variant("PRM, function-as-step, no correction", split_steps, "mc", "none"),
    "reweighting": Variant("PRM, function-as-step, sample reweighting", split_steps, "mc", "sample_reweighting"),
    "dreamprm": Variant("DreamPRM-Code (function-as-step + label correction)", split_steps, "mc", "label_correction"),
}
MAIN_VARIANT = "dreamprm"
#: Paired comparisons reported under the table: what label correction, steps and the hybrid add.
COMPARISONS = [("dreamprm", "function"), ("dreamprm", "reweighting"), ("dreamprm", "orm"), ("function", "line"),
               ("public_dreamprm", "public_random")]

#: Training defaults of the embedded demo (2 CPU cores, minutes); every one is a flag of `FunctionStepPRMConfig`.
DEMO_TRAINING_DEFAULTS: dict[str, Any] = {
    "output_dir": "outputs/dreamprm-code",
    "num_train_epochs": 2,
    "learning_rate": 1e-3,
    "per_device_train_batch_size": 8,
    "per_device_eval_batch_size": 16,
    "max_length": 768,
    "logging_steps": 20,
    "save_strategy": "no",
    "report_to": "none",
    "meta_batch_size": 8,
    "meta_warmup_steps": 10,
    "meta_interval": 4,
    "seed": 0,
}


@dataclass
class ExperimentArguments:
    """What to label, train and evaluate. The PRM's own training arguments are a `FunctionStepPRMConfig`.

    > Data

    problems / candidates: bundled ``humaneval`` (CodeGen-16B samples, shipped) or ``classeval``, or your files.
    num_candidates: candidates per problem that are trajectories and reranked (N); pool_size: candidates per
    problem available to the `PoolGenerator` as donors. eval_fraction / split_seed: the split by problem.

    > Labelling

    generator: ``pool`` (offline), ``openai`` or ``transformers`` (with generator_model / base_url).
    rollouts / line_rollouts: Monte-Carlo completions per prefix (function steps / line steps).

    > Model

    backbone: ``tiny-causal`` (a small Qwen2 from a config with a byte-level tokenizer trained on the training
    split), ``minilm`` (the packaged MiniLM encoder with LoRA) or a Hub id / local path (LoRA).
    """

    problems: str = field(default="humaneval", metadata={"help": "'humaneval', 'classeval' or a problems file/dir."})
    candidates: str = field(
        default="humaneval", metadata={"help": "'humaneval', 'classeval' or a JSONL of candidates."}
    )
    num_candidates: int = field(default=10, metadata={"help": "Candidates per problem to label and rerank (N)."})
    pool_size: int = field(default=20, metadata={"help": "Candidates per problem the PoolGenerator may graft from."})
    max_problems: int | None = field(default=None, metadata={"help": "Use only the first K problems (smoke runs)."})
    eval_fraction: float = field(default=0.4, metadata={"help": "Share of problems held out for evaluation."})
    split_seed: int = field(default=0, metadata={"help": "Seed of the split by problem."})
    dev_split: bool = field(
        default=False,
        metadata={"help": "Model selection: drop the held-out problems and split the training problems again "
                          "(seed + 1) into train and dev; the table is then on dev."},
    )
    methods: str = field(
        default="orm,line,function,reweighting,dreamprm",
        metadata={"help": f"Comma-separated variants to train, from {list(VARIANTS)}."},
    )
    generator: str = field(default="pool", metadata={"help": "'pool' (offline), 'openai' or 'transformers'."})
    generator_model: str | None = field(default=None, metadata={"help": "Model name/path for openai|transformers."})
    base_url: str | None = field(default=None, metadata={"help": "OpenAI-compatible server URL (generator=openai)."})
    rollouts: int = field(default=4, metadata={"help": "MC completions per function-step prefix (paper: 16)."})
    line_rollouts: int = field(default=2, metadata={"help": "MC completions per line-step prefix."})
    line_trajectories: int = field(
        default=2, metadata={"help": "Candidates per training problem labelled line by line (the costliest labels)."}
    )
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


# ----------------------------------------------------------------------------------------------------- data
def split_problems(task_ids: Sequence[str], eval_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Deterministic split by problem: a task is held out when its seeded hash falls under ``eval_fraction``."""
    if not 0.0 < eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction}.")
    ranked = sorted(task_ids, key=lambda t: hashlib.sha256(f"{seed}:{t}".encode()).hexdigest())
    n_eval = max(1, round(len(ranked) * eval_fraction))
    held = set(ranked[:n_eval])
    return [t for t in task_ids if t not in held], [t for t in task_ids if t in held]


def _load(args: ExperimentArguments) -> tuple[list[Problem], dict[str, list[str]]]:
    problems = load_problems(args.problems)
    if args.max_problems:
        problems = problems[: args.max_problems]
    pool = load_candidates(args.candidates, problems)
    missing = [p.task_id for p in problems if len(pool.get(p.task_id, [])) < 2]
    if missing:
        logger.warning("%d problems have fewer than 2 candidates and are left out: %s", len(missing), missing[:5])
    problems = [p for p in problems if p.task_id not in set(missing)]
    return problems, {p.task_id: pool[p.task_id][: args.pool_size] for p in problems}


def _execution_allowed(args: ExperimentArguments) -> bool:
    """Opt-in rule: the bundled candidates (shipped and run by this project's tests) may run by default; anything
    else needs ``--allow_code_execution`` or ``HF_ALLOW_CODE_EVAL=1`` (checked by the executor)."""
    if args.allow_code_execution is not None:
        return args.allow_code_execution
    return args.candidates in BUNDLED and args.generator == "pool"


def _generator(args: ExperimentArguments, pool: dict[str, list[str]], splitter: Callable) -> Any:
    if args.generator == "pool":
        return PoolGenerator(pool, splitter=splitter, seed=args.split_seed)
    return make_generator(args.generator, model=args.generator_model, base_url=args.base_url)


def build_datasets(args: ExperimentArguments, problems: list[Problem], pool: dict[str, list[str]],
                   train_ids: list[str], executor: SandboxedExecutor, need: set[str]) -> dict[str, Any]:
    """Label once what the requested variants need: final verdicts of all N candidates, MC step labels of the
    training problems' candidates (per splitter). All work goes through the resumable cache."""
    trajectories = {t: progs[: args.num_candidates] for t, progs in pool.items()}
    train_problems = [p for p in problems if p.task_id in set(train_ids)]
    cache = Path(args.cache_dir)
    out = {"final": label_final(problems, trajectories, executor=executor, cache_dir=cache / "final")}
    train_traj = {t: trajectories[t] for t in train_ids}
    if "line" in need:
        line_traj = {t: progs[: args.line_trajectories] for t, progs in train_traj.items()}
        out["mc_line"] = label_steps(
            train_problems, line_traj, _generator(args, pool, split_lines), rollouts=args.line_rollouts,
            temperature=args.rollout_temperature, executor=executor, cache_dir=cache / "lines", splitter=split_lines,
            source="line",
        )
    if need & {"function", "reweighting", "dreamprm"}:
        out["mc_function"] = label_steps(
            train_problems, train_traj, _generator(args, pool, split_steps), rollouts=args.rollouts,
            temperature=args.rollout_temperature, executor=executor, cache_dir=cache / "functions",
            splitter=split_steps, source="function",
        )
    return out


def _train_rows(variant: Variant, data: dict[str, Any], train_ids: set[str]) -> Any:
    """Step rows for ``variant``: MC-labelled rows, or whole programs with their verdict as one step."""
    if variant.labels == "final":
        ds = data["final"].filter(lambda r: r["task_id"] in train_ids)
        return ds.map(lambda r: {"steps": [r["code"]], "mc_labels": [float(r["passed"])]})
    key = "mc_line" if variant.splitter is split_lines else "mc_function"
    return data[key]


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


def train_variant(name: str, args: ExperimentArguments, config: FunctionStepPRMConfig, data: dict[str, Any],
                  train_ids: set[str], backbone: tuple[Any, Any]) -> tuple[FunctionStepPRM, FunctionStepPRMTrainer]:
    """Train the variant ``name`` of `VARIANTS` from a fresh PRM; the meta set is the training problems' whole
    programs with their verdicts."""
    variant = VARIANTS[name]
    rows = _train_rows(variant, data, train_ids)
    meta = None
    if variant.meta_method != "none":
        meta = data["final"].filter(lambda r: r["task_id"] in train_ids).select_columns(["prompt", "steps", "passed"])
    run_config = dataclasses.replace(config, meta_method=variant.meta_method,
                                     output_dir=os.path.join(config.output_dir, name))
    prm = build_prm(args, run_config, backbone)
    trainer = FunctionStepPRMTrainer(prm, run_config, train_dataset=rows, meta_dataset=meta)
    trainer.train()
    return prm, trainer


# ----------------------------------------------------------------------------------------------------- evaluation
def _hybrid(scores: list[list[float]], public: list[list[bool | None]]) -> list[list[float]]:
    """Ranking values of "public-test filter, then score" (the rule of `rerank`)."""
    return [ranking_values([Ranked(i, "", s, public_pass=pp) for i, (s, pp) in enumerate(zip(ss, ps))])
            for ss, ps in zip(scores, public)]


def score_groups(prm: FunctionStepPRM, problems: list[Problem], groups: list[list[str]], splitter: Callable,
                 aggregation: str, batch_size: int) -> list[list[float]]:
    """`FunctionStepPRM.program_scores` of every candidate, grouped by problem."""
    pairs = [(p.prompt, code) for p, g in zip(problems, groups) for code in g]
    scores = iter(prm.program_scores(pairs, aggregation, batch_size, splitter=splitter))
    return [[next(scores) for _ in g] for g in groups]


def format_table(rows: list[dict], title: str = "", comparisons: Sequence[dict] = ()) -> str:
    """Markdown table: each row's pass@1 with its 95% CI, and (for rankings) the difference to random, paired CI."""
    lines = [title] if title else []
    lines += ["| method | pass@1 [95% CI] | minus random [95% CI] |", "|---|---|---|"]
    for r in rows:
        ci = f" [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]" if r.get("ci") else ""
        diff = ""
        if r.get("diff") is not None:
            d, (lo, hi) = r["diff"]
            diff = f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]" + (" *" if lo > 0 or hi < 0 else "")
        lines.append(f"| {r['label']} | {r['value']:.3f}{ci} | {diff} |")
    lines.append("")
    lines.append("`*`: the 95% CI of the difference excludes 0 (paired bootstrap over problems).")
    if comparisons:
        lines += ["", "| paired comparison | difference [95% CI] |", "|---|---|"]
        for c in comparisons:
            lo, hi = c["ci"]
            star = " *" if lo > 0 or hi < 0 else ""
            lines.append(f"| {c['label']} | {c['diff']:+.3f} [{lo:+.3f}, {hi:+.3f}]{star} |")
    return "\n".join(lines)


def run_experiment(args: ExperimentArguments, config: FunctionStepPRMConfig) -> dict[str, Any]:
    """Label, train each requested variant, evaluate all on the held-out problems; write and return the results."""
    start = time.time()
    names = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in names if m not in VARIANTS]
    if unknown:
        raise ValueError(f"Unknown methods {unknown} in --methods; choose from {list(VARIANTS)}.")
    problems, pool = _load(args)
    train_ids, eval_ids = split_problems([p.task_id for p in problems], args.eval_fraction, args.split_seed)
    if args.dev_split:
        train_ids, eval_ids = split_problems(train_ids, args.eval_fraction, args.split_seed + 1)
    executor = SandboxedExecutor(timeout=args.exec_timeout, memory_mb=args.exec_memory_mb, workers=args.exec_workers,
                                 allow_code_execution=_execution_allowed(args))
    with config.main_process_first(desc="labelling"):  # the main process fills the cache, the others read it
        data = build_datasets(args, problems, pool, train_ids, executor, set(names))

    eval_problems = [p for p in problems if p.task_id in set(eval_ids)]
    by_task: dict[str, tuple[list[str], list[bool]]] = {}
    for row in data["final"]:
        codes, passed = by_task.setdefault(row["task_id"], ([], []))
        codes.append(row["code"])
        passed.append(bool(row["passed"]))
    eval_problems = [p for p in eval_problems if p.task_id in by_task]
    groups = [by_task[p.task_id][0] for p in eval_problems]
    passed = [by_task[p.task_id][1] for p in eval_problems]
    public = public_test_verdicts([p.public_tests for p in eval_problems], groups, executor)
    backbone = build_backbone(args, config, [c for t in train_ids for c in pool[t]])

    def metrics(scores: list[list[float]]) -> dict:
        return rerank_metrics(scores, passed, n_bootstrap=args.n_bootstrap, seed=args.split_seed)

    def compare(a: str, b: str, label: str) -> dict:
        """Paired difference of two rankings' reranked pass@1 over the same problems, with a bootstrap CI."""
        diff = per_problem_reranked(ranked[a], passed) - per_problem_reranked(ranked[b], passed)
        lo, hi = bootstrap_ci(diff, args.n_bootstrap, args.split_seed)
        return {"label": label, "a": a, "b": b, "diff": float(diff.mean()), "ci": (lo, hi)}

    flat = [[0.0] * len(g) for g in groups]
    random_metrics = metrics(flat)
    results: list[dict] = [_row("random", "random pick (mean pass@1)", random_metrics, "mean_pass@1")]
    curves: dict[str, dict] = {"random": scaling_curve(flat, passed)}
    ranked: dict[str, list[list[float]]] = {"random": flat}
    for name in names:
        variant = VARIANTS[name]
        prm, trainer = train_variant(name, args, config, data, set(train_ids), backbone)
        scores = score_groups(prm, eval_problems, groups, variant.splitter, config.score_aggregation,
                              config.per_device_eval_batch_size)
        ranked[name] = scores
        results.append(_row(name, variant.label, metrics(scores), "reranked_pass@1"))
        curves[name] = scaling_curve(scores, passed)
        if name == MAIN_VARIANT:
            trainer.save_model(config.output_dir)
            if config.push_to_hub:
                trainer.push_to_hub()
    ranked["public_random"] = _hybrid(flat, public)
    curves["public_random"] = scaling_curve(ranked["public_random"], passed)
    results.append(_row("public_random", "public-test filter, then random pick", metrics(ranked["public_random"]),
                        "reranked_pass@1"))
    if MAIN_VARIANT in ranked:
        ranked["public_dreamprm"] = _hybrid(ranked[MAIN_VARIANT], public)
        curves["public_dreamprm"] = scaling_curve(ranked["public_dreamprm"], passed)
        results.append(_row("public_dreamprm", "public-test filter, then DreamPRM-Code",
                            metrics(ranked["public_dreamprm"]), "reranked_pass@1"))
    comparisons = [compare(a, b, f"{a} minus {b}") for a, b in COMPARISONS if a in ranked and b in ranked]
    results.append(_row("oracle", f"oracle pass@{args.num_candidates}", random_metrics, "oracle_pass@N"))

    out = {
        "table": results,
        "comparisons": comparisons,
        "curves": curves,
        "eval": {"task_ids": [p.task_id for p in eval_problems], "passed": passed, "rankings": ranked,
                 "public_pass": public},
        "setup": {"split": "dev" if args.dev_split else "held-out",
                  "num_train_problems": len(train_ids), "num_eval_problems": len(eval_problems),
                  "candidates_per_problem": args.num_candidates, "backbone": args.backbone,
                  "seconds": round(time.time() - start, 1), "arguments": dataclasses.asdict(args)},
    }
    out["title"] = _title(out["setup"])
    if config.process_index == 0:
        _write(out, args.results_dir)
    return out


def _row(key: str, label: str, m: dict, metric: str) -> dict:
    """One table row read off `rerank_metrics` output: ``metric`` with its CI; rankings also get the paired
    difference to random."""
    row: dict[str, Any] = {"key": key, "label": label, "value": m[metric], "ci": None, "diff": None}
    if f"{metric}_ci_low" in m:
        row["ci"] = (m[f"{metric}_ci_low"], m[f"{metric}_ci_high"])
    if metric == "reranked_pass@1" and "reranked_minus_random_ci_low" in m:
        ci = (m["reranked_minus_random_ci_low"], m["reranked_minus_random_ci_high"])
        row["diff"] = (m["reranked_minus_random"], ci)
    row["metrics"] = {k: v for k, v in m.items()
                      if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v))}
    return row


def _write(out: dict, results_dir: str) -> None:
    path = Path(results_dir)
    path.mkdir(parents=True, exist_ok=True)
    (path / "results.json").write_text(json.dumps(out, indent=2, default=str) + "\n")
    (path / "results.md").write_text(format_table(out["table"], out["title"], out["comparisons"]) + "\n")


def _title(s: dict) -> str:
    return (f"{s['split'].capitalize()} problems: {s['num_eval_problems']} ({s['candidates_per_problem']} "
            f"candidates each); train problems: {s['num_train_problems']}; backbone: {s['backbone']}; "
            f"{s['seconds']} s.\n")
