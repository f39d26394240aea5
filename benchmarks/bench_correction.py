"""Does meta label correction correct? Synthetic multi-step tasks with known step truth, library defaults.

A program is 1-6 steps; a step is good or bad; step truth is cumulative (1 iff every step so far is good) and a
program passes iff all its steps are good. Each problem has a policy quality ``q`` ~ U(0.55, 0.95): the chance a
step it writes is good. Train rows are trajectories of train problems; their non-final labels are noisy and
learnable, the final label is the clean verdict (fixed, as `labeling.label_steps` writes it). The meta set is
complete programs of other problems with clean verdicts (`training.splits.split_by_task`); held-out problems give
candidate groups for reranked pass@1.

Noise on the non-final labels: symmetric flips (10/30/45 %), or MC-like ``k/M``, ``k ~ Binomial(M, q^r)`` for a
correct prefix with ``r`` steps left (0 for an incorrect prefix: it can never be completed into a pass).

Per setting (noise x batch size) and seed, trained with library defaults (only the run length, the PRM learning
rate for a from-scratch tiny model, and the batch size are set): ``none`` (noisy labels), ``label_correction``,
``sample_reweighting``, and two controls: the plain PRM's own predictions as labels, and self-training (a fresh
PRM trained on those predictions). Every PRM gets the meta programs during the warm-up (``none`` and self-training
too: the same train ∪ meta data, only the meta step differs). Columns: MAE and wrong-side-of-0.5 rate of the
learnable labels against truth (reweighting: weighted by its learned weights), reranked pass@1 of each PRM, and the
paired bootstrap CI of corrected minus noisy pass@1 (problems pooled over seeds).

Every cell also trains a PRM on the *true* step labels: the ceiling of any label method, so that truth - none is
the pass@1 that better labels can buy at all (the headroom). Part ``ranking`` repeats the cells on unmarked steps
(``vocabulary="hidden"``: 8 or 32 good strings and as many bad ones, a seeded random map) with 200 held-out
problems x 8 candidates, where the marked task's ranking saturates, trained for ``RANKING_STEPS`` (the plain
PRM needs longer to learn unmarked strings); there every PRM can be trained on several data
orders (``--replicas``, pass@1 averaged), a second ``none`` on other orders gives the noise floor (``none' -
none``: a plain PRM retrained on another data order moved by +0.012 over 9 seeds), and CIs resample seeds, then
problems. Part ``classeval`` compares MC and corrected
labels of real ClassEval trajectories with ``step_ground_truth`` (3 seeds, each its own draw of tasks).

    nice -n 10 python benchmarks/bench_correction.py                      # all parts (~50 min on one core)
    nice -n 10 python benchmarks/bench_correction.py --part ranking       # one part; the others are kept
    nice -n 10 python benchmarks/bench_correction.py --quick              # one seed, fewer settings
    nice -n 10 python benchmarks/bench_correction.py --workers 2          # cells on two processes (~25 min)
    nice -n 10 python benchmarks/bench_correction.py --part ranking --seeds 9 --replicas 2 --workers 2  # stored (46 min)
    nice -n 10 python benchmarks/bench_correction.py --hypergradient neumann   # the implicit option; OUT_neumann.*
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed

import datasets
import numpy as np
import torch
from sklearn.metrics import roc_auc_score

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from dreamprm_trl import FunctionStepPRMConfig, FunctionStepPRMTrainer  # noqa: E402
from dreamprm_trl.scripts.demo_backbones import tiny_causal_backbone  # noqa: E402
from dreamprm_trl.schema import LABEL_FIXED as FIXED_LABEL_COLUMN  # noqa: E402
from dreamprm_trl.training import split_by_task  # noqa: E402
from dreamprm_trl.training.config import HYPERGRADIENTS  # noqa: E402
from dreamprm_trl.evaluation.metrics import bootstrap_ci, per_problem_reranked  # noqa: E402
from dreamprm_trl.prm import FunctionStepPRM  # noqa: E402

GOOD = [f"a{i}+;\n" for i in range(6)]
BAD = [f"a{i}-;\n" for i in range(6)]
PROMPT = "#\n"
HIDDEN_SIZE = 32
#: Optimizer steps per batch size on the marked vocabulary, where the plain PRM's predictions are already on the
#: true side of 0.991-1.000 of the labels at this length (`correction.md`, "wrong plain preds" 0.000-0.009; 0.000-0.034
#: with the earlier 20-step warm-up).
STEPS = {8: 120, 64: 60}
#: Optimizer steps per batch size on the hidden vocabulary (part ``ranking``): where the plain PRM's held-out pass@1
#: stops rising on 16 strings, flip 30 %, 6 seeds (a rule on ``none``, never on a meta method). At batch 8 it rose
#: 0.816 / 0.845 / 0.855 / 0.852 at 120 / 240 / 480 / 960 steps; at batch 64 0.819 / 0.859 / 0.860 / 0.857 at
#: 60 / 120 / 240 / 480. At ``STEPS`` the PRMs were underfit (`correction_tried.md`, the round "the hidden-vocabulary
#: PRMs were underfit").
RANKING_STEPS = {8: 480, 64: 120}
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def hidden_vocabulary(seed: int, size: int = HIDDEN_SIZE) -> tuple[list[str], list[str]]:
    """``size`` good and ``size`` bad step strings ``sNN();`` whose goodness is a seeded random map: unmarked."""
    names = [f"s{j:02d}();\n" for j in range(2 * size)]
    random.Random(f"vocabulary-{seed}").shuffle(names)
    return names[:size], names[size:]


def synthetic_task(noise: str, seed: int, n_problems: int = 96, per_problem: int = 2, n_eval: int = 48,
                   candidates: int = 8, vocabulary: str = "marked", hidden_size: int = HIDDEN_SIZE) -> dict:
    """Train rows (noisy learnable labels + clean final), meta programs, eval candidate groups, and the truth.

    ``vocabulary="marked"``: a step's goodness is written on it (``a3+`` / ``a3-``); ``"hidden"``: ``hidden_size``
    good and as many bad unmarked strings (:func:`hidden_vocabulary`), so a PRM must learn each string's goodness
    from the labels (fewer strings: more labels per string).
    """
    if vocabulary not in ("marked", "hidden"):
        raise ValueError(f"vocabulary={vocabulary!r}: use 'marked' or 'hidden'.")
    good_steps, bad_steps = (GOOD, BAD) if vocabulary == "marked" else hidden_vocabulary(seed, hidden_size)
    rng = random.Random(seed)
    quality = [rng.uniform(0.55, 0.95) for _ in range(n_problems + n_eval)]

    def write(p: int) -> tuple[list[str], list[float]]:
        return random_program(rng, quality[p], good_steps, bad_steps)

    rows = []
    for p in range(n_problems):
        for _ in range(per_problem):
            steps, truth = write(p)
            noisy = [_noisy(t, len(steps) - k - 1, quality[p], noise, rng) for k, t in enumerate(truth[:-1])]
            rows.append({"task_id": f"p{p}", "prompt": PROMPT, "steps": steps, "mc_labels": noisy + [truth[-1]],
                         FIXED_LABEL_COLUMN: [False] * (len(steps) - 1) + [True], "truth": truth})
    train_idx, meta_idx = split_by_task([r["task_id"] for r in rows], meta_fraction=0.25, seed=seed)
    meta = [{"task_id": rows[i]["task_id"], "prompt": PROMPT, "steps": rows[i]["steps"],
             "passed": bool(rows[i]["truth"][-1])} for i in meta_idx]
    groups = [[write(n_problems + e) for _ in range(candidates)] for e in range(n_eval)]
    return {"train": [rows[i] for i in train_idx], "meta": meta, "groups": groups,
            "texts": good_steps + bad_steps + [PROMPT]}


def random_program(rng: random.Random, quality: float, good_steps: list[str],
                   bad_steps: list[str]) -> tuple[list[str], list[float]]:
    """A program of 1-6 steps, each good with probability ``quality``, and its cumulative step truth."""
    good = [rng.random() < quality for _ in range(rng.randint(1, 6))]
    truth = [float(all(good[: k + 1])) for k in range(len(good))]
    return [rng.choice(good_steps if g else bad_steps) for g in good], truth


def _noisy(truth: float, remaining: int, q: float, noise: str, rng: random.Random) -> float:
    kind, value = noise.split(":")
    if kind == "flip":
        return 1.0 - truth if rng.random() < float(value) else truth
    m = int(value)  # MC: M rollouts complete a correct prefix correctly with probability q^remaining
    return sum(rng.random() < q ** remaining for _ in range(m)) / m if truth else 0.0


def make_prm(seed: int, texts: list[str] | None = None, vocab_size: int = 300) -> FunctionStepPRM:
    body, tok = tiny_causal_backbone(texts or GOOD + BAD + [PROMPT], hidden_size=32, num_layers=1, num_heads=2,
                                     num_kv_heads=1, vocab_size=vocab_size, seed=seed)
    torch.manual_seed(seed)
    return FunctionStepPRM.from_backbone(body, tok)


def train(task: dict, labels: list[list[float]], method: str, batch: int, steps: int, seed: int, tmp: str,
          trainer_cls: type = FunctionStepPRMTrainer, **config):
    """A PRM trained on ``task``'s train rows with ``labels`` and its meta set, library defaults (``trainer_cls``:
    a subclass that records something, for the diagnostics; ``config``: config fields a diagnostic varies)."""
    rows = [dict(r, mc_labels=y) for r, y in zip(task["train"], labels)]
    cols = ["task_id", "prompt", "steps", "mc_labels", FIXED_LABEL_COLUMN]
    ds = datasets.Dataset.from_list([{k: r[k] for k in cols} for r in rows])
    args = FunctionStepPRMConfig(
        output_dir=tmp, use_cpu=True, report_to="none", save_strategy="no", disable_tqdm=True, logging_steps=10,
        learning_rate=3e-3, per_device_train_batch_size=batch, max_steps=steps, seed=seed, meta_method=method,
        **config,
    )
    prm = make_prm(seed, task.get("texts"), task.get("vocab_size", 300))
    trainer = trainer_cls(prm, args, train_dataset=ds, meta_dataset=datasets.Dataset.from_list(task["meta"]))
    trainer.train()
    return trainer


def step_predictions(prm: FunctionStepPRM, rows: list[dict]) -> list[list[float]]:
    scored = prm.score_batch([(r["prompt"], r["steps"]) for r in rows], batch_size=64, progress=False)
    return [list(s.scores) for s in scored]


def pass_values(prm: FunctionStepPRM, groups: list) -> np.ndarray:
    pairs = [(PROMPT, steps) for g in groups for steps, _ in g]
    scores = np.asarray(prm.program_scores(pairs, batch_size=64, progress=False)).reshape(len(groups), -1)
    passed = [[bool(t[-1]) for _, t in g] for g in groups]
    return per_problem_reranked(scores.tolist(), passed)


def step_auroc(prm: FunctionStepPRM, groups: list) -> float:
    """AUROC of the PRM's step scores against step truth over every step of the held-out candidates."""
    rows = [{"prompt": PROMPT, "steps": steps} for g in groups for steps, _ in g]
    scores = [s for p in step_predictions(prm, rows) for s in p]
    return float(roc_auc_score([t for g in groups for _, truth in g for t in truth], scores))


def label_error(task: dict, labels: list[list[float]], weights=None) -> tuple[float, float]:
    """(MAE, wrong-side rate) of the learnable labels against the truth; optionally weighted."""
    err, wrong, total = 0.0, 0.0, 0.0
    for i, r in enumerate(task["train"]):
        for k, (y, t) in enumerate(zip(labels[i], r["truth"])):
            if r[FIXED_LABEL_COLUMN][k]:
                continue
            w = 1.0 if weights is None else weights[i][k]
            err, wrong, total = err + w * abs(y - t), wrong + w * (abs(y - t) >= 0.5), total + w
    return err / max(total, 1e-12), wrong / max(total, 1e-12)


def run_cell(noise: str, batch: int, seed: int, steps: int, vocabulary: str = "marked", n_eval: int = 48,
             hidden_size: int = HIDDEN_SIZE, hypergradient: str = "darts", replicas: int = 1) -> dict:
    """One (noise, batch, seed): label errors and held-out reranking of the plain, corrected, reweighted,
    self-trained and truth-trained PRMs (see the module docstring); ``hypergradient`` of the two meta methods.

    Every PRM is trained ``replicas`` times, on data orders (`TrainingArguments.data_seed`) 0..replicas-1, and its
    per-problem pass@1 and step AUROC are means over them; label errors are those of order 0. Hidden
    vocabulary: the noise floor ``none_b`` is ``none`` again on as many other orders: PRMs that differ only in the
    data order differ in pass@1 by about as much as the methods do.
    """
    if replicas < 1:
        raise ValueError(f"replicas={replicas}: train each PRM on at least one data order (replicas >= 1).")
    task = synthetic_task(noise, seed, n_eval=n_eval, vocabulary=vocabulary, hidden_size=hidden_size)
    noisy = [r["mc_labels"] for r in task["train"]]
    groups = task["groups"]
    size = hidden_size if vocabulary == "hidden" else len(GOOD)
    out = {"noise": noise, "batch": batch, "seed": seed, "vocabulary": vocabulary, "size": size,
           "replicas": replicas, "noisy": label_error(task, noisy),
           "pass_oracle": [float(any(t[-1] for _, t in g)) for g in groups],
           "pass_random": [float(np.mean([t[-1] for _, t in g])) for g in groups]}
    ranked: dict[str, list] = {}

    def rank(name: str, prm: FunctionStepPRM) -> None:
        ranked.setdefault(name, []).append((pass_values(prm, groups), step_auroc(prm, groups)))

    def fit(labels: list[list[float]], method: str, r: int) -> FunctionStepPRMTrainer:
        """A PRM on data order ``r``; 0 is the trainer's default (data_seed = seed), as before replicas existed."""
        order = {} if r == 0 else {"data_seed": seed + 1000 * r}
        meta = {"hypergradient": hypergradient} if method != "none" else {}
        return train(task, labels, method, batch, steps, seed, tmp, **order, **meta)

    with tempfile.TemporaryDirectory() as tmp:
        for r in range(replicas):
            prm = fit(noisy, "none", r).model
            preds = step_predictions(prm, task["train"])
            preds = [p[:-1] + [row["mc_labels"][-1]] for p, row in zip(preds, task["train"])]  # verdict stays clean
            rank("none", prm)
            lc, rw = fit(noisy, "label_correction", r), fit(noisy, "sample_reweighting", r)
            rank("lc", lc.model)
            rank("rw", rw.model)
            rank("self", fit(preds, "none", r).model)
            rank("truth", fit([row["truth"] for row in task["train"]], "none", r).model)
            if vocabulary == "hidden":
                rank("none_b", fit(noisy, "none", replicas + r).model)
            if r == 0:
                out["plain_preds"] = label_error(task, preds)
                out["corrected"] = label_error(task, lc.corrected_labels())
                out["reweighted"] = label_error(task, noisy, rw.meta_table.row_weights())
    for name, runs in ranked.items():
        out[f"pass_{name}"] = np.mean([p for p, _ in runs], axis=0).tolist()
        out[f"auroc_{name}"] = float(np.mean([a for _, a in runs]))
    return out


PRMS = ("none", "lc", "rw", "self", "truth")
#: Paired pass@1 differences with bootstrap CIs; truth - none is the headroom: what clean step labels buy at all;
#: none_b - none (hidden vocabulary) the noise floor: ``none`` again, trained on other data orders.
PAIRS = (("lc", "none"), ("lc", "self"), ("lc", "truth"), ("truth", "none"), ("none_b", "none"), ("self", "none"))


def summarise(cells: list[dict]) -> list[dict]:
    """Mean ± sd over seeds per (size, noise, batch); pass@1 pooled over seeds' problems with paired bootstrap CIs
    that resample seeds, then problems within them (`bootstrap_ci` with ``clusters``): a seed's PRMs are one
    training run each, and the run-to-run spread is as large as the differences."""
    table = []
    for k in dict.fromkeys((c["size"], c["noise"], c["batch"]) for c in cells):
        group = [c for c in cells if (c["size"], c["noise"], c["batch"]) == k]
        row = {"size": k[0], "noise": k[1], "batch": k[2], "seeds": len(group),
               "replicas": group[0].get("replicas", 1)}
        for name in ("noisy", "corrected", "reweighted", "plain_preds"):
            for i, what in enumerate(("mae", "wrong")):
                v = np.array([c[name][i] for c in group])
                row[f"{name}_{what}"], row[f"{name}_{what}_sd"] = float(v.mean()), float(v.std())
        for name in PRMS + ("oracle", "random"):
            row[f"pass_{name}"] = float(np.mean([v for c in group for v in c[f"pass_{name}"]]))
        for name in PRMS:
            row[f"auroc_{name}"] = float(np.mean([c[f"auroc_{name}"] for c in group]))
        for first, other in PAIRS:
            if any(f"pass_{name}" not in c for c in group for name in (first, other)):
                continue
            row[f"{first}_minus_{other}"], row[f"{first}_minus_{other}_ci"] = paired_difference(group, first, other)
        row["problems"] = sum(len(c["pass_none"]) for c in group)
        row["informative"] = sum(0 < r < 1 for c in group for r in c["pass_random"])
        table.append(row)
    return table


def paired_difference(group: list[dict], first: str, other: str) -> tuple[float, tuple[float, float]]:
    """Mean pass@1 of ``first`` minus ``other`` over the problems of every cell in ``group``, and its 95 % CI
    resampling seeds, then problems within them (`bootstrap_ci` with ``clusters``)."""
    diff = np.array([v for c in group for v in np.subtract(c[f"pass_{first}"], c[f"pass_{other}"])])
    clusters = [c["seed"] for c in group for _ in c[f"pass_{first}"]]
    return float(diff.mean()), bootstrap_ci(diff, n_bootstrap=2000, clusters=clusters)


def _ms(r: dict, key: str) -> str:
    return f"{r[key]:.3f} ± {r[key + '_sd']:.3f}"


def _ci(r: dict, other: str, first: str = "lc") -> str:
    lo, hi = r[f"{first}_minus_{other}_ci"]
    return f"{r[f'{first}_minus_{other}']:+.3f} [{lo:+.3f}, {hi:+.3f}]"


def markdown_labels(table: list[dict]) -> list[str]:
    """The label-error and pass@1 table of the marked-vocabulary task."""
    lines = ["| noise | batch | seeds | MAE noisy | MAE corrected | MAE reweighted | MAE plain-PRM preds | wrong noisy "
             "| wrong corrected | wrong reweighted | wrong plain preds | pass@1 none | corrected | reweighted "
             "| self-train | corrected - none (95% CI) |", "|" + "---|" * 16]
    for r in table:
        lines.append(
            f"| {r['noise']} | {r['batch']} | {r['seeds']} | {_ms(r, 'noisy_mae')} | {_ms(r, 'corrected_mae')} | "
            f"{_ms(r, 'reweighted_mae')} | {_ms(r, 'plain_preds_mae')} | {_ms(r, 'noisy_wrong')} | "
            f"{_ms(r, 'corrected_wrong')} | {_ms(r, 'reweighted_wrong')} | {_ms(r, 'plain_preds_wrong')} | "
            f"{r['pass_none']:.3f} | {r['pass_lc']:.3f} | {r['pass_rw']:.3f} | {r['pass_self']:.3f} | "
            f"{_ci(r, 'none')} |")
    return lines


def markdown_ranking(table: list[dict]) -> list[str]:
    """The held-out ranking table of the hidden-vocabulary task (``truth``: a PRM trained on the true step labels,
    the ceiling of any label method; truth - none is the headroom that label quality can buy)."""
    lines = ["| strings | noise | batch | seeds x orders | problems (informative) | MAE noisy -> corrected "
             "| wrong noisy -> corrected | step AUROC none / corrected / reweighted / self-train / truth "
             "| pass@1 random | none | corrected | reweighted | self-train | truth labels | oracle "
             "| noise floor: none' - none (95% CI) | truth - none: headroom | corrected - none "
             "| corrected - self-train |", "|" + "---|" * 19]
    for r in table:
        auc = " / ".join(f"{r[f'auroc_{n}']:.3f}" for n in PRMS)
        lines.append(
            f"| {2 * r['size']} | {r['noise']} | {r['batch']} | {r['seeds']} x {r.get('replicas', 1)} | "
            f"{r['problems']} ({r['informative']}) | "
            f"{r['noisy_mae']:.3f} -> {r['corrected_mae']:.3f} | {r['noisy_wrong']:.3f} -> {r['corrected_wrong']:.3f} "
            f"| {auc} | {r['pass_random']:.3f} | {r['pass_none']:.3f} | {r['pass_lc']:.3f} | {r['pass_rw']:.3f} | "
            f"{r['pass_self']:.3f} | {r['pass_truth']:.3f} | {r['pass_oracle']:.3f} | "
            f"{_ci(r, 'none', 'none_b') if 'none_b_minus_none' in r else '-'} | {_ci(r, 'none', 'truth')} | "
            f"{_ci(r, 'none')} | {_ci(r, 'self')} |")
    return lines


def classeval_part(seeds: range = range(3), n_tasks: int = 12, workers: int = 1, **kw) -> dict:
    """`classeval_seed` for every seed (a seed draws its own tasks, split and trajectories) on ``workers``
    processes, with the mean over seeds of every agreement measure."""
    with _pool(workers) as pool:
        runs = [f.result() for f in [pool.submit(classeval_seed, seed, n_tasks, **kw) for seed in seeds]]
    mean = {name: {k: float(np.mean([r[name][k] for r in runs])) for k in runs[0][name]}
            for name in ("mc", "corrected", "plain_preds")}
    return {"runs": runs, "mean": mean, "rollouts": runs[0]["rollouts"], "steps": runs[0]["steps"]}


def classeval_seed(seed: int = 0, n_tasks: int = 12, rollouts: int = 4, steps: int = 100,
                   max_chars: int = 2500, hypergradient: str = "darts") -> dict:
    """MC and corrected labels of real ClassEval trajectories against ``step_ground_truth`` (non-final steps).

    A seeded third of ``n_tasks`` sampled tasks gives the meta set (all 25 bundled candidates and the reference
    solution, clean verdicts from ``label_final``: candidates alone pass ~5 %); the rest give 2 parsable candidates
    each, labelled by ``label_steps`` (PoolGenerator over the
    task's candidates, ``rollouts`` per prefix; candidates of at most ``max_chars`` characters, so that most fit the
    default ``max_length``). A tiny PRM (tokenizer of 2048 tokens trained on these programs) is trained as in the
    synthetic cells with ``none`` and ``label_correction``; a row longer than ``max_length`` is dropped by the
    collator and its PRM predictions (NaN) are left out of that row's agreement. The PRM gets no task description
    (prompt ``#``): a from-scratch 1-layer model cannot read a 2000-character skeleton, and rows stay short.
    """
    os.environ.setdefault("HF_ALLOW_CODE_EVAL", "1")
    from dreamprm_trl.sandbox import SandboxedExecutor
    from dreamprm_trl.labeling import label_final, label_steps, step_ground_truth
    from dreamprm_trl.labeling.generators import PoolGenerator
    from dreamprm_trl.steps import split_steps
    from dreamprm_trl.problems import load_bundled_classeval, load_bundled_classeval_candidates

    start, rng = time.time(), random.Random(seed)
    problems = {p.task_id: p for p in load_bundled_classeval()}
    pool = load_bundled_classeval_candidates()
    sampled = sorted(rng.sample(sorted(problems), n_tasks))
    train_idx, meta_idx = split_by_task(sampled, meta_fraction=1 / 3, seed=seed)
    executor = SandboxedExecutor(timeout=3.0, progress=False)
    meta_tasks = [sampled[i] for i in meta_idx]
    meta_ds = label_final([problems[t] for t in meta_tasks],
                          {t: pool[t] + [problems[t].metadata["solution_code"]] for t in meta_tasks},
                          executor=executor, progress=False)
    meta = [{"task_id": r["task_id"], "prompt": PROMPT, "steps": r["steps"], "passed": r["passed"]} for r in meta_ds]
    trajectories = []
    for t in (sampled[i] for i in train_idx):
        parsable = [c for c in pool[t] if len(c) <= max_chars and all(s.kind != "block" for s in split_steps(c))]
        trajectories += [(t, c) for c in rng.sample(parsable, min(2, len(parsable)))]
    rows = label_steps([problems[t] for t in dict.fromkeys(t for t, _ in trajectories)], trajectories,
                       PoolGenerator(pool, seed=seed), rollouts=rollouts, executor=executor, progress=False).to_list()
    truth = [step_ground_truth(problems[r["task_id"]], r["code"], per_test=r["per_test"]) for r in rows]
    labelled = time.time() - start
    print(f"classeval: {len(rows)} trajectories, {len(meta)} meta programs labelled in {labelled:.0f}s", flush=True)
    task = {"train": [dict(r, truth=t, prompt=PROMPT) for r, t in zip(rows, truth)], "meta": meta,
            "texts": [PROMPT] + ["".join(r["steps"]) for r in rows + meta],
            "vocab_size": 2048}
    mc = [r["mc_labels"] for r in rows]
    with tempfile.TemporaryDirectory() as tmp:
        plain = train(task, mc, "none", 8, steps, seed, tmp)
        preds = step_predictions(plain.model, task["train"])
        trainer = train(task, mc, "label_correction", 8, steps, seed, tmp, hypergradient=hypergradient)
    reliability = [h["meta/reliability"] for h in trainer.state.log_history if "meta/reliability" in h]
    out = {"seed": seed, "tasks_train": sorted({r["task_id"] for r in rows}), "tasks_meta": meta_tasks,
           "trajectories": len(rows), "meta_programs": len(meta), "meta_passed": sum(m["passed"] for m in meta),
           "rollouts": rollouts, "steps": steps, "labelling_s": labelled,
           "reliability": float(np.mean(reliability)) if reliability else float("nan")}
    for name, labels in (("mc", mc), ("corrected", trainer.corrected_labels()), ("plain_preds", preds)):
        out[name] = real_agreement(task["train"], labels)
    out["mc_tie_sd"] = tie_break_sd(task["train"], mc)
    out["wall_s"] = time.time() - start
    return out


def tie_break_sd(rows: list[dict], labels: list[list[float]], draws: int = 2000) -> float:
    """Spread of the AUROC when the labels' ties are broken at random (a tiny jitter): MC labels are mostly
    exactly 0, so any small move of the labels reorders those ties and moves the AUROC by about this much."""
    rng = np.random.default_rng(0)
    y, t = nonfinal_pairs(rows, labels)
    return float(np.std([roc_auc_score(t, y + rng.normal(0, 1e-3, len(y))) for _ in range(draws)]))


def nonfinal_pairs(rows: list[dict], labels: list[list[float | None]]) -> tuple[np.ndarray, np.ndarray]:
    """(labels, truth) of every non-final step with a finite label (None: no rollouts; NaN: a dropped row)."""
    ys = [(y, t) for r, lab in zip(rows, labels) for y, t in zip(lab[:-1], r["truth"][:-1])
          if y is not None and np.isfinite(y)]
    return np.array([a for a, _ in ys], dtype=float), np.array([b for _, b in ys])


def real_agreement(rows: list[dict], labels: list[list[float | None]]) -> dict:
    """MAE, wrong-side-of-0.5 rate and AUROC of non-final step labels against the rows' ``truth``."""
    y, t = nonfinal_pairs(rows, labels)
    auroc = float(roc_auc_score(t, y)) if 0 < t.sum() < len(t) else float("nan")
    return {"steps": len(y), "truth_positive": float(t.mean()), "mae": float(np.abs(y - t).mean()),
            "wrong": float((np.abs(y - t) >= 0.5).mean()), "auroc": auroc, "mean_label": float(y.mean())}


def markdown_classeval(c: dict) -> list[str]:
    """The ClassEval agreement table: the mean over seeds, then every seed."""
    runs = c["runs"]
    lines = [f"{len(runs)} seeds, each {min(r['trajectories'] for r in runs)}-{max(r['trajectories'] for r in runs)} "
             f"trajectories (M = {c['rollouts']} pool rollouts per prefix), a meta set of ClassEval programs of other "
             f"tasks, {c['steps']} optimizer steps at batch 8; non-final steps per seed "
             + ", ".join(str(r["mc"]["steps"]) for r in runs) + ", ground-truth positive rate "
             + ", ".join(f"{r['mc']['truth_positive']:.2f}" for r in runs) + ".", "",
             "| labels | MAE | wrong side of 0.5 | AUROC | mean label | AUROC per seed |", "|---|---|---|---|---|---|"]
    for name, title in (("mc", "Monte-Carlo (noisy)"), ("corrected", "label_correction"),
                        ("plain_preds", "plain PRM's predictions")):
        r = c["mean"][name]
        lines.append(f"| {title} | {r['mae']:.3f} | {r['wrong']:.3f} | {r['auroc']:.3f} | {r['mean_label']:.3f} | "
                     + " / ".join(f"{run[name]['auroc']:.3f}" for run in runs) + " |")
    lines += ["", "Per seed: MAE MC -> corrected " + "; ".join(
        f"s{r['seed']} {r['mc']['mae']:.3f} -> {r['corrected']['mae']:.3f}" for r in runs)
        + ". Mean reliability over the meta phase " + ", ".join(f"{r['reliability']:.3f}" for r in runs)
        + ". MC labels are mostly exactly 0: breaking their ties at random moves their AUROC by "
        + ", ".join(f"{r['mc_tie_sd']:.3f}" for r in runs) + " (sd), so small label moves change AUROC that much."]
    return lines


def _merge(path: str, part: str, result) -> dict:
    """Read OUT.json (if any), replace one part's result, write it back: parts can be rerun separately."""
    data = {}
    if os.path.exists(path):
        with open(path) as f:
            data = json.load(f)
        data = data if "parts" in data else {"parts": {}}
    data.setdefault("parts", {})[part] = result
    with open(path, "w") as f:
        json.dump(data, f, indent=1)
    return data["parts"]


def report(parts: dict, notes: str | None = None, hypergradient: str = "darts") -> str:
    """correction.md from every part in OUT.json, then the hand-written ``notes`` file (what was tried), if any."""
    but = "" if hypergradient == "darts" else f" but `hypergradient={hypergradient!r}` for both meta methods"
    lines = [f"# Label correction benchmark (`benchmarks/bench_correction.py`, library defaults{but})", ""]
    if "synthetic" in parts:
        p = parts["synthetic"]
        lines += ["## Marked steps: label error (and pass@1, saturated)", "", p["command"], "", *markdown_labels(
            p["table"]), ""]
    if "ranking" in parts:
        p = parts["ranking"]
        lines += ["## Hidden vocabulary: held-out reranking", "", p["command"], "", *markdown_ranking(p["table"]), ""]
    if "classeval" in parts:
        lines += ["## ClassEval: agreement with method-level step truth", "", parts["classeval"]["command"], "",
                  *markdown_classeval(parts["classeval"]), ""]
    if notes and os.path.exists(notes):
        with open(notes) as f:
            lines += [f.read().rstrip(), ""]
    return "\n".join(lines)


def _quiet() -> None:
    """One thread per process and no progress bars: cells run side by side without oversubscribing the cores."""
    torch.set_num_threads(1)
    datasets.disable_progress_bars()


def _pool(workers: int) -> ProcessPoolExecutor:
    """``workers`` fresh (spawned) processes, each `_quiet`."""
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_quiet)


def synthetic_part(noises: list[str], batches: list[int], seeds: range, vocabulary: str, n_eval: int,
                   sizes: tuple[int, ...] = (HIDDEN_SIZE,), workers: int = 1, hypergradient: str = "darts",
                   replicas: int = 1) -> list:
    """Every (hidden size, noise, batch, seed) cell on ``workers`` processes, printed as it finishes (``sizes`` only
    for ``"hidden"``); cells come back in grid order whatever the order they finish in."""
    start = time.time()
    hidden_sizes = sizes if vocabulary == "hidden" else (HIDDEN_SIZE,)
    steps = RANKING_STEPS if vocabulary == "hidden" else STEPS
    grid = [(n, b, seed, steps[b], vocabulary, n_eval, z, hypergradient, replicas)
            for z in hidden_sizes for n in noises for b in batches for seed in seeds]
    with _pool(workers) as pool:
        futures = [pool.submit(run_cell, *g) for g in grid]
        for future in as_completed(futures):
            c = future.result()
            print(f"{vocabulary} {c['size']} {c['noise']} b{c['batch']} s{c['seed']}: MAE {c['noisy'][0]:.3f} -> "
                  f"{c['corrected'][0]:.3f}, wrong {c['noisy'][1]:.3f} -> {c['corrected'][1]:.3f}, pass "
                  + " ".join(f"{n} {np.mean(c[f'pass_{n}']):.3f}" for n in PRMS + ("none_b",) if f"pass_{n}" in c)
                  + f" oracle {np.mean(c['pass_oracle']):.3f} ({time.time() - start:.0f}s)", flush=True)
    return [f.result() for f in futures]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=["synthetic", "ranking", "classeval", "all"], default="all",
                        help="run one part; the others already in OUT.json are kept")
    parser.add_argument("--quick", action="store_true", help="one seed; synthetic: flip:0.3 and mc:4 at batch 8; "
                        "ranking: flip:0.3 at batch 8; classeval: 6 tasks")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1, help="cells run side by side on this many processes")
    parser.add_argument("--replicas", type=int, default=1, help="data orders each PRM is trained on (pass@1 "
                        "averaged over them); the stored ranking table uses 2")
    parser.add_argument("--hypergradient", default="darts", choices=list(HYPERGRADIENTS),
                        help="of label correction and reweighting; not the default: writes OUT_<name>.*")
    parser.add_argument("--out", default=os.path.join(OUT, "correction"), help="writes OUT.md and OUT.json")
    args = parser.parse_args()
    _quiet()
    if args.hypergradient != "darts":
        args.out += f"_{args.hypergradient}"
    seeds = range(1 if args.quick else args.seeds)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    quick = (" --quick" if args.quick else "") + (f" --seeds {args.seeds}" if args.seeds != 3 else "") + (
        f" --hypergradient {args.hypergradient}" if args.hypergradient != "darts" else "") + (
        f" --replicas {args.replicas}" if args.replicas != 1 else "")
    parts = {}
    for part in (["synthetic", "ranking", "classeval"] if args.part == "all" else [args.part]):
        start = time.time()
        if part == "classeval":
            result = classeval_part(seeds, n_tasks=6 if args.quick else 12, workers=args.workers,
                                    hypergradient=args.hypergradient)
        else:
            marked = part == "synthetic"
            noises = (["flip:0.3", "mc:4"] if marked else ["flip:0.3"]) if args.quick else (
                ["flip:0.1", "flip:0.3", "flip:0.45", "mc:4", "mc:16"] if marked else ["flip:0.3", "mc:4"])
            cells = synthetic_part(noises, [8] if args.quick else [8, 64], seeds, "marked" if marked else "hidden",
                                   48 if marked else 200, (HIDDEN_SIZE,) if args.quick else (8, HIDDEN_SIZE),
                                   args.workers, args.hypergradient, args.replicas)
            result = {"table": summarise(cells), "cells": cells}
        workers = f" --workers {args.workers}" if args.workers > 1 else ""
        cores = f"{args.workers} shared cores" if workers else "one shared core"
        result["command"] = (f"`nice -n 10 python benchmarks/bench_correction.py --part {part}{quick}{workers}` "
                             f"({time.time() - start:.0f} s on {cores})")
        parts = _merge(args.out + ".json", part, result)
    text = report(parts, args.out + "_tried.md", args.hypergradient)
    with open(args.out + ".md", "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
