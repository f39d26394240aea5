"""The experiment's results: table rows with CIs and paired differences, comparisons, scaling curves, and the
Markdown report."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

from dreamprm_trl.evaluation.metrics import bootstrap_ci, per_problem_reranked, rerank_metrics, scaling_curve

from .arguments import COMPARISONS, FLOOR, ExperimentArguments


def results(args: ExperimentArguments, ranked: dict, labels: dict, passed: list[list[bool]]) -> dict[str, Any]:
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


def write(out: dict, results_dir: str) -> None:
    path = Path(results_dir)
    path.mkdir(parents=True, exist_ok=True)
    (path / "results.json").write_text(json.dumps(out, indent=2, default=str) + "\n")
    (path / "results.md").write_text(render(out) + "\n")


def render(out: dict) -> str:
    """The Markdown report of a `run_experiment` result."""
    return format_table(out["table"], out["title"], out["comparisons"], out.get("label_quality"))


def make_title(s: dict) -> str:
    return (f"Dataset {s['dataset']}; {s['split']} problems: {s['num_eval_problems']} ({s['candidates_per_problem']} "
            f"candidates each); trajectory problems: {s['num_trajectory_problems']} ({s['trajectories_per_problem']} "
            f"trajectories, {s['rollouts']} rollouts per prefix); meta problems: {s['num_meta_problems']}; "
            f"backbone: {s['backbone']}; public examples contradicting the hidden tests: "
            f"{s['public_test_contradictions']}; {s['seconds']} s ({s['labelling_seconds']} s labelling).\n")
