"""Reranking quality on held-out problems: the results table (JSON + Markdown) and the test-time scaling plot.

    python benchmarks/bench_quality.py                      # the embedded default (ClassEval), as examples/train.py
    python benchmarks/bench_quality.py --dataset both       # any ExperimentArguments / FunctionStepPRMConfig flag
    python benchmarks/bench_quality.py --replot             # redraw the figure from quality.json

Writes benchmarks/results/quality.{json,md} and benchmarks/results/quality_scaling.png: reranked pass@1 against the
number of candidates N (exact expectation over all size-N subsets of each problem's pool).
"""

import json
import sys
import textwrap
from pathlib import Path

from dreamprm_trl.scripts.experiment import render, run_experiment
from dreamprm_trl.scripts.train import make_parser

RESULTS = Path(__file__).parent / "results"
CURVES = {"random": "random pick", "parses_random": "parses + random pick", "orm": "ORM",
          "line": "PRM (line-as-step)", "function": "PRM (function-as-step)", "dreamprm": "DreamPRM-Code",
          "parses_dreamprm": "parses + DreamPRM-Code", "public_random": "public tests + random pick",
          "public_dreamprm": "public tests + DreamPRM-Code"}


def plot(curves: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for key, label in CURVES.items():
        if key in curves:
            c = curves[key]
            values = c["mean_pass@1"] if key == "random" else c["reranked_pass@1"]
            ax.plot(c["n"], values, marker="o", label=label)
    any_curve = next(iter(curves.values()))
    ax.plot(any_curve["n"], any_curve["oracle_pass@N"], marker="o", linestyle="--", color="gray", label="oracle pass@N")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("candidates per problem (N)")
    ax.set_ylabel("pass@1 of the pick")
    ax.set_title(textwrap.fill(title, 80), fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    if sys.argv[1:] == ["--replot"]:  # redraw the figure from the last run's JSON
        out = json.loads((RESULTS / "quality.json").read_text())
        plot(out["curves"], RESULTS / "quality_scaling.png", out["title"].strip())
        return
    parser = make_parser()
    parser.set_defaults(results_dir="outputs/results/quality")
    experiment_args, training_args = parser.parse_args_and_config()
    out = run_experiment(experiment_args, training_args)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out["command"] = "python benchmarks/bench_quality.py " + " ".join(sys.argv[1:])
    (RESULTS / "quality.json").write_text(json.dumps(out, indent=2, default=str) + "\n")
    table = render(out)
    (RESULTS / "quality.md").write_text(f"Command: `{out['command'].strip()}`\n\n{table}\n")
    plot(out["curves"], RESULTS / "quality_scaling.png", out["title"].strip())
    print(table)


if __name__ == "__main__":
    main()
