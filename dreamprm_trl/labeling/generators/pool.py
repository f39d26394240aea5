"""An empirical rollout policy with no model: finish a prefix with the remaining steps of other sampled programs."""

from __future__ import annotations

import ast
import hashlib
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ...steps import Step, split_steps
from .base import GenerationError, RolloutRequest

__all__ = ["PoolGenerator"]

def _imports(code: str) -> list[str]:
    """Source of each top-level ``import`` / ``from ... import`` statement of ``code`` (none if it does not parse)."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return []
    nodes = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    return [ast.get_source_segment(code, n) or "" for n in nodes]


def _normalise(code: str) -> str:
    return "\n".join(line.rstrip() for line in code.strip().splitlines())


class PoolGenerator:
    """An empirical policy with no model: finish a prefix with the remaining steps of other sampled programs.

    ``pool`` maps task id to candidate programs for that task (e.g. N samples of a real LLM). To complete a
    prefix of k steps, a donor program is drawn from the task's pool (never the trajectory the prefix was cut
    from, see :class:`RolloutRequest`), and the donor steps the prefix does not already provide are appended:

    - *by name* when every named step (function, method, class) of the prefix also appears in the donor: donor
      steps whose name the prefix defines are dropped, and unnamed donor steps (imports, module code) among its
      first k are taken as covered by the prefix's own;
    - *by position* otherwise: donor steps k, k+1, ... are appended.

    The donor's top-level imports that the prefix lacks are appended at module level. Donors that do not parse
    are never used. Donors are drawn without replacement in an order seeded by (``seed``, task id, prefix), so
    results are reproducible and the first m of n rollouts are a uniform m-subset; n above the number of donors
    cycles through them. ``temperature`` and ``max_new_tokens`` are ignored.

    Bias: completions come from the candidate distribution of the task, but conditioned on the prefix only by
    step names or positions, not by its content, so a prefix that relies on its own conventions (attribute
    names set in ``__init__``, helper signatures, return formats) is completed by code written for other
    conventions and its label is pessimistic; a prefix that matches the majority's conventions looks better
    than under a policy that would continue it. Donors are other samples of the same policy, so the labels are
    correlated with the prefix's own program and with each other (with D donors there are at most D distinct
    rollouts, and M > D repeats them). A step's label is bounded by how often the pool's tails are correct, so
    where few candidates pass (most ClassEval tasks) labels collapse towards 0 whatever the prefix is worth;
    ``benchmarks/results/labeling.md`` measures this against method-level ground truth. A task with one
    candidate has no donors: its prefixes get no rollouts.
    """

    excludes_source = True

    def __init__(
        self,
        pool: Mapping[str, Sequence[str]],
        splitter: Callable[[str], list[Step]] = split_steps,
        seed: int = 0,
    ) -> None:
        self.pool = {task_id: list(programs) for task_id, programs in pool.items()}
        self.splitter = splitter
        self.seed = seed
        self._split_cache: dict[str, list[Step] | None] = {}
        digest = hashlib.sha256()
        for task_id in sorted(self.pool):
            digest.update(task_id.encode() + b"\0" + "\0".join(self.pool[task_id]).encode() + b"\1")
        self._pool_hash = digest.hexdigest()[:16]

    def _steps(self, code: str) -> list[Step] | None:
        if code not in self._split_cache:
            try:
                steps = self.splitter(code)
            except (SyntaxError, ValueError):
                steps = None
            self._split_cache[code] = steps if steps and all(s.kind != "block" for s in steps) else None
        return self._split_cache[code]

    def _usable(self, code: str) -> bool:
        """Whether ``code`` splits into steps that are not blank-line blocks (it parses): only such donors graft."""
        return self._steps(code) is not None

    def graft(self, prefix: str, prefix_steps: Sequence[Step], donor: str, donor_steps: Sequence[Step]) -> str:
        """The text a donor program contributes after ``prefix`` (see the class docstring for the rule).

        Top-level imports of the donor that the prefix lacks are appended at module level after the grafted
        steps: the donor's code needs them, and module-level imports run before any test calls a function.
        """
        k = len(prefix_steps)
        names = {s.name for s in prefix_steps if s.name}
        donor_names = {s.name for s in donor_steps if s.name}
        if names and names <= donor_names:
            rest = [s for i, s in enumerate(donor_steps) if not (s.name in names if s.name else i < k)]
        else:
            rest = list(donor_steps[k:])
        text = "".join(s.text for s in rest)
        have = set(_imports(prefix))
        missing = [line for line in _imports(donor) if line not in have]
        if missing:
            text += ("" if not text or text.endswith("\n") else "\n") + "\n".join(missing) + "\n"
        return text

    def generate_for(self, task_id: str, prefix: str, n: int, exclude: str | None = None) -> list[str]:
        """``n`` completions (text to append to ``prefix``) drawn from the other candidates of ``task_id``."""
        if task_id not in self.pool:
            raise KeyError(f"PoolGenerator has no candidates for task {task_id!r}; add them to the pool.")
        prefix_steps = self._steps(prefix)
        if prefix_steps is None:
            raise GenerationError(f"Cannot split the prefix for task {task_id!r} into steps (does it parse?).")
        skip = _normalise(exclude) if exclude is not None else None
        donors = [d for d in self.pool[task_id] if (skip is None or _normalise(d) != skip) and self._usable(d)]
        if not donors or n <= 0:
            return []
        key = hashlib.sha256(f"{self.seed}\0{task_id}\0{prefix}".encode()).digest()
        rng = random.Random(int.from_bytes(key[:8], "big"))
        order: list[str] = []
        while len(order) < n:
            order.extend(rng.sample(donors, len(donors)))
        sep = "" if not prefix or prefix.endswith("\n") else "\n"
        return [sep + self.graft(prefix, prefix_steps, d, self._steps(d)) for d in order[:n]]

    def generate(
        self,
        prompts: Sequence[str],
        n: int,
        temperature: float = 0.0,
        max_new_tokens: int = 0,
        stop: Sequence[str] | None = None,
        *,
        task_ids: Sequence[str] | None = None,
    ) -> list[list[str]]:
        """Protocol entry point: each prompt is a code prefix, ``task_ids`` names its task (required)."""
        if task_ids is None or len(task_ids) != len(prompts):
            raise ValueError(
                "PoolGenerator.generate needs task_ids=[...] with one task id per prompt (each prompt is a code "
                "prefix of that task's program); or use complete_prefixes() with RolloutRequests."
            )
        return [self.generate_for(t, p, n) for t, p in zip(task_ids, prompts)]

    def complete_prefixes(
        self, requests: Sequence[RolloutRequest], n: int, temperature: float = 0.0, max_new_tokens: int = 0
    ) -> list[list[str]]:
        return [
            [r.prefix + c for c in self.generate_for(r.task_id, r.prefix, n, exclude=r.exclude)] for r in requests
        ]

    def config(self) -> dict[str, Any]:
        return {"type": "pool", "pool_hash": self._pool_hash, "seed": self.seed, "splitter": self.splitter.__name__}
