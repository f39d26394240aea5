"""The policy protocol behind Monte-Carlo step labels, and how a code prefix becomes a prompt and back a program.

Labelling talks to generators through :func:`complete_prefixes`, which turns :class:`RolloutRequest` s
(problem text + code prefix) into full programs. Text generators get a prompt built by :func:`rollout_prompt`
and their completion is joined to the prefix by :func:`assemble_program`; a generator with its own
``complete_prefixes`` (the pool generator) grafts directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from ...steps import FENCE, extract_code, parses

__all__ = [
    "Generator", "GenerationError", "RolloutRequest", "rollout_prompt", "assemble_program", "complete_prefixes",
    "truncate_at_stop",
]

ROLLOUT_INSTRUCTION = (
    "Continue the Python program below. Keep the code that is already written unchanged and write the "
    "remaining functions so that the whole program solves the task."
)


class GenerationError(RuntimeError):
    """A generator could not produce completions (bad request, server error after all retries, bad input)."""


@runtime_checkable
class Generator(Protocol):
    """Anything that samples ``n`` completions per prompt.

    ``task_ids`` (one per prompt) is only needed by generators that draw on per-task material such as
    :class:`PoolGenerator`; model-backed generators ignore it. ``config()`` is a JSON-safe description that
    changes whenever the generator would sample differently; it keys the labelling cache.
    """

    def generate(
        self,
        prompts: Sequence[str],
        n: int,
        temperature: float,
        max_new_tokens: int,
        stop: Sequence[str] | None = None,
        *,
        task_ids: Sequence[str] | None = None,
    ) -> list[list[str]]: ...

    def config(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class RolloutRequest:
    """Ask the policy to finish ``prefix`` (the first k steps of a program) for problem ``task_id``.

    ``prompt`` is the problem text shown before the code. ``exclude`` is the trajectory the prefix was cut
    from; generators that sample from a pool of programs (``excludes_source = True``) never use it as a donor.
    """

    task_id: str
    prompt: str
    prefix: str
    exclude: str | None = None


def rollout_prompt(request: RolloutRequest) -> str:
    """The text a model-backed policy sees: the task, an instruction, and the prefix as an open code block.

    A completion model continues the code block directly; a chat model usually answers with a fenced program,
    which :func:`assemble_program` handles too.
    """
    return f"{request.prompt.rstrip()}\n\n{ROLLOUT_INSTRUCTION}\n\n```python\n{request.prefix}"


def assemble_program(prefix: str, completion: str) -> str:
    """The full program a completion of ``prefix`` stands for.

    A completion that continues the open code block (the text before its first, bare fence parses as Python
    after the prefix) is cut at that closing fence; any other fenced completion (a chat answer) is reduced to
    its code block. If the resulting code restates the prefix it is the whole program, otherwise it is
    appended to the prefix.
    """
    match = FENCE.search(completion)
    code = completion
    if match is not None:
        head = completion[: match.start()]
        if match.group(2) == "" and parses(prefix + head):
            code = head
        else:
            code = extract_code(completion)
    head = prefix.strip()
    if head and code.lstrip().startswith(head):
        return code
    if prefix and not prefix.endswith("\n") and not code.startswith("\n"):
        prefix += "\n"
    return prefix + code


def complete_prefixes(
    generator: Generator,
    requests: Sequence[RolloutRequest],
    n: int,
    temperature: float = 0.3,
    max_new_tokens: int = 512,
) -> list[list[str]]:
    """``n`` full programs per request, continuing each request's prefix.

    Generators with their own ``complete_prefixes`` method (e.g. :class:`PoolGenerator`) are asked directly;
    any other :class:`Generator` gets :func:`rollout_prompt` prompts and its completions go through
    :func:`assemble_program`.
    """
    if not requests:
        return []
    own = getattr(generator, "complete_prefixes", None)
    if callable(own):
        return own(requests, n, temperature=temperature, max_new_tokens=max_new_tokens)
    outputs = generator.generate(
        [rollout_prompt(r) for r in requests],
        n,
        temperature,
        max_new_tokens,
        task_ids=[r.task_id for r in requests],
    )
    if len(outputs) != len(requests):
        raise GenerationError(
            f"{type(generator).__name__}.generate returned {len(outputs)} lists for {len(requests)} prompts; "
            "it must return one list of completions per prompt."
        )
    return [[assemble_program(r.prefix, c) for c in outs] for r, outs in zip(requests, outputs)]


def truncate_at_stop(text: str, stop: Sequence[str] | None) -> str:
    """``text`` cut before the first of the ``stop`` strings it holds (for servers and models that overrun them)."""
    if not stop:
        return text
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=len(text))
    return text[:cut]
