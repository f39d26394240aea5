"""Choosing the default backbone: DreamPRM-Code on each offline backbone, on a dev split of the training problems.

    python benchmarks/bench_backbones.py [--backbones tiny-causal,minilm] [any ExperimentArguments / config flag]

The held-out problems of the main table are removed first (``dev_split``), so the choice never sees them. Writes
benchmarks/results/backbones.{json,md}: reranked pass@1 with its CI, the difference to random, and training time.
"""

import argparse
import json
import time
from pathlib import Path

from dreamprm_trl.scripts.experiment import run_experiment
from dreamprm_trl.scripts.train import make_parser

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--backbones", default="tiny-causal,minilm")
    known, rest = pre.parse_known_args()
    parser = make_parser()
    parser.set_defaults(methods="dreamprm", dev_split=True, allow_code_execution=True)
    rows = []
    for backbone in known.backbones.split(","):
        args, config = parser.parse_args_and_config(rest + ["--backbone", backbone,
                                                            "--results_dir", f"outputs/results/backbone_{backbone}",
                                                            "--output_dir", f"outputs/backbone_{backbone}"])
        start = time.time()
        out = run_experiment(args, config)
        by_key = {r["key"]: r for r in out["table"]}
        rows.append({"backbone": backbone, "seconds": round(time.time() - start, 1), "setup": out["setup"],
                     "random": by_key["random"], "dreamprm": by_key["dreamprm"], "oracle": by_key["oracle"]})
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "backbones.json").write_text(json.dumps(rows, indent=2, default=str) + "\n")
    lines = ["| backbone | dev reranked pass@1 [95% CI] | minus random [95% CI] | random | oracle | seconds |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        d = r["dreamprm"]
        diff, (lo, hi) = d["diff"]
        lines.append(f"| {r['backbone']} | {d['value']:.3f} [{d['ci'][0]:.3f}, {d['ci'][1]:.3f}] | "
                     f"{diff:+.3f} [{lo:+.3f}, {hi:+.3f}] | {r['random']['value']:.3f} | {r['oracle']['value']:.3f} | "
                     f"{r['seconds']} |")
    s = rows[0]["setup"]
    train = s["num_trajectory_problems"] + s["num_meta_problems"]  # the experiment's setup has no single train count
    header = (f"Dev split of the training problems ({s['num_eval_problems']} dev, {train} train, "
              f"{s['candidates_per_problem']} candidates each); DreamPRM-Code with the demo's training defaults.\n")
    (RESULTS / "backbones.md").write_text(header + "\n" + "\n".join(lines) + "\n")
    print(header + "\n".join(lines))


if __name__ == "__main__":
    main()
