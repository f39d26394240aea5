"""Evaluation: how well a scorer picks among candidate programs.

- `metrics`: unbiased pass@k, reranked pass@1 with bootstrap CIs, scaling curves, AUROC and label agreement
  (pure numpy, no torch);
- `rerank`: best-of-N with a PRM, the public-test hybrid and the file-level `rerank_file`;
- ``pass_at_1_rerank/``: the ``evaluate`` module and its card (``evaluate.load(metrics.PASS_AT_1_RERANK)``).

Nothing is imported here, so ``dreamprm_trl.evaluation.rerank`` stays the module (the package exports the
function of that name).
"""
