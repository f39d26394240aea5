"""`evaluate` module for reranked pass@1: ``evaluate.load(PASS_AT_1_RERANK)`` (this folder; the constant is in
`dreamprm_trl.evaluation.metrics`).

A thin wrapper; the maths lives in :func:`dreamprm_trl.evaluation.metrics.rerank_metrics`.
"""

import datasets
import evaluate

from dreamprm_trl.evaluation.metrics import rerank_metrics

_DESCRIPTION = """
Reranked pass@1 of a scorer (e.g. a process reward model) that picks one of N candidate programs per problem,
beside random-pick pass@1 (the mean pass rate), unbiased pass@k and oracle pass@N, with problem-level bootstrap
95% confidence intervals for the reranked pass@1 and for its paired difference to random pick. Candidates tied
at the top score count as a uniformly random pick among them (``tie_break="mean"``).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: per problem, a list of candidate scores (higher is better).
    references: per problem, a list of booleans, whether each candidate passes the hidden tests.
    ks: k values for the unbiased pass@k (default (1,)).
    n_bootstrap: number of problem-level bootstrap resamples (default 1000; 0 disables the CIs).
    seed: bootstrap seed (default 0).
    tie_break: "mean" (default) or "first".
    confidence: CI level (default 0.95).
Returns:
    dict with reranked_pass@1, mean_pass@1, reranked_minus_random, oracle_pass@N, pass@k, gap_closed,
    *_ci_low / *_ci_high, num_problems, num_candidates.
Examples:
    >>> metric = evaluate.load(PASS_AT_1_RERANK)
    >>> out = metric.compute(predictions=[[0.9, 0.1], [0.2, 0.8]], references=[[True, False], [False, False]])
    >>> out["reranked_pass@1"]
    0.5
"""

_CITATION = """
@article{dreamprmcode2025,
  title={DreamPRM-Code: Function-as-Step Process Reward Model with Label Correction for LLM Coding},
  journal={arXiv preprint arXiv:2512.15000},
  year={2025}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class PassAt1Rerank(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("float64")),
                    "references": datasets.Sequence(datasets.Value("bool")),
                }
            ),
        )

    def _compute(self, predictions, references, ks=(1,), n_bootstrap=1000, seed=0, tie_break="mean", confidence=0.95):
        return rerank_metrics(
            predictions, references, ks=ks, n_bootstrap=n_bootstrap, seed=seed, tie_break=tie_break,
            confidence=confidence,
        )
