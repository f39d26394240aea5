"""Policies that continue a code prefix: the generators behind Monte-Carlo step labels.

One protocol, three implementations:

- :class:`TransformersGenerator`: a local ``transformers`` causal LM (batched ``generate``, chat template when
  the tokenizer has one).
- :class:`OpenAICompatibleGenerator`: any OpenAI-compatible HTTP server (``vllm serve``, OpenAI, ...), with a
  concurrency limit and retries; the way to scale generation past one machine.
- :class:`PoolGenerator`: no model; grafts the remaining steps of *other* sampled candidates onto a prefix.

Labelling talks to generators through :func:`complete_prefixes`, which turns :class:`RolloutRequest` s
(problem text + code prefix) into full programs. Text generators get a prompt built by :func:`rollout_prompt`
and their completion is joined to the prefix by :func:`assemble_program`; the pool generator grafts directly.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import random
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from .steps import Step, extract_code, split_steps

__all__ = [
    "Generator",
    "GenerationError",
    "RolloutRequest",
    "TransformersGenerator",
    "OpenAICompatibleGenerator",
    "PoolGenerator",
    "rollout_prompt",
    "assemble_program",
    "complete_prefixes",
    "make_generator",
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
    match = _FENCE_LINE.search(completion)
    code = completion
    if match is not None:
        head = completion[: match.start()]
        if match.group(1) == "" and _parses(prefix + head):
            code = head
        else:
            code = extract_code(completion)
    head = prefix.strip()
    if head and code.lstrip().startswith(head):
        return code
    if prefix and not prefix.endswith("\n") and not code.startswith("\n"):
        prefix += "\n"
    return prefix + code


_FENCE_LINE = re.compile(r"^[ \t]*```[ \t]*([\w+.#-]*)[^\n]*$", re.M)


def _parses(code: str) -> bool:
    try:
        ast.parse(code)
    except (SyntaxError, ValueError):
        return False
    return True


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


def _truncate_at_stop(text: str, stop: Sequence[str] | None) -> str:
    if not stop:
        return text
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=len(text))
    return text[:cut]


# --------------------------------------------------------------------------------------------------------------
# transformers
# --------------------------------------------------------------------------------------------------------------


class TransformersGenerator:
    """Sample from a local ``transformers`` causal LM with batched ``generate``.

    Prompts are wrapped in the tokenizer's chat template when it has one (``use_chat_template=None``), as a
    single user turn followed by the generation prompt. Prompts are left-padded, ``batch_size`` prompts at a
    time, each with ``num_return_sequences=n``; ``temperature=0`` means greedy decoding (then all ``n``
    completions are equal). ``seed`` reseeds torch's global RNG at every call so that labels are reproducible
    (``None`` leaves the RNG alone); extra keyword arguments (``top_p``, ...) go to ``model.generate``.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        batch_size: int = 8,
        use_chat_template: bool | None = None,
        seed: int | None = 0,
        **generate_kwargs: Any,
    ) -> None:
        if tokenizer.pad_token_id is None:
            if tokenizer.eos_token_id is None:
                raise ValueError(
                    "TransformersGenerator needs a tokenizer with a pad or eos token to left-pad batches; "
                    "set tokenizer.pad_token first."
                )
            tokenizer.pad_token = tokenizer.eos_token
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.use_chat_template = (
            bool(getattr(tokenizer, "chat_template", None)) if use_chat_template is None else use_chat_template
        )
        self.seed = seed
        self.generate_kwargs = generate_kwargs

    def format(self, prompt: str) -> str:
        """The exact text fed to the model for ``prompt``."""
        if not self.use_chat_template:
            return prompt
        return self.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )

    def generate(
        self,
        prompts: Sequence[str],
        n: int,
        temperature: float = 0.3,
        max_new_tokens: int = 512,
        stop: Sequence[str] | None = None,
        *,
        task_ids: Sequence[str] | None = None,
    ) -> list[list[str]]:
        import torch

        if self.seed is not None:
            torch.manual_seed(self.seed)
        tok = self.tokenizer
        old_side, tok.padding_side = tok.padding_side, "left"
        device = next(self.model.parameters()).device
        greedy = temperature <= 0
        sampling = {"do_sample": False} if greedy else {"do_sample": True, "temperature": temperature}
        per_prompt = 1 if greedy else n  # greedy decoding gives one answer; it is repeated n times
        results: list[list[str]] = []
        try:
            for start in range(0, len(prompts), self.batch_size):
                texts = [self.format(p) for p in prompts[start : start + self.batch_size]]
                enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=not self.use_chat_template)
                enc = {k: v.to(device) for k, v in enc.items()}
                with torch.no_grad():
                    out = self.model.generate(
                        **enc,
                        max_new_tokens=max_new_tokens,
                        num_return_sequences=per_prompt,
                        pad_token_id=tok.pad_token_id,
                        **sampling,
                        **self.generate_kwargs,
                    )
                new = tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
                for i in range(len(texts)):
                    outs = [_truncate_at_stop(t, stop) for t in new[i * per_prompt : (i + 1) * per_prompt]]
                    results.append(outs * n if greedy else outs)
        finally:
            tok.padding_side = old_side
        return results

    def config(self) -> dict[str, Any]:
        cfg = self.model.config
        return {
            "type": "transformers",
            "model": getattr(cfg, "_name_or_path", "") or cfg.__class__.__name__,
            "commit": getattr(cfg, "_commit_hash", None),
            "num_parameters": sum(p.numel() for p in self.model.parameters()),
            "chat_template": self.use_chat_template,
            "seed": self.seed,
            "generate_kwargs": {k: repr(v) for k, v in sorted(self.generate_kwargs.items())},
        }


# --------------------------------------------------------------------------------------------------------------
# OpenAI-compatible HTTP
# --------------------------------------------------------------------------------------------------------------


class OpenAICompatibleGenerator:
    """Sample from any OpenAI-compatible server over HTTP (``vllm serve``, OpenAI, TGI, ...).

    One request per prompt (``n`` choices each), at most ``max_concurrency`` in flight. Responses 429 and 5xx
    and connection failures are retried up to ``max_retries`` times with exponential backoff
    (``backoff * 2**attempt`` seconds, capped at ``max_backoff``), waiting ``Retry-After`` instead when the
    server sends it. Any other 4xx raises :class:`GenerationError` naming the status and the response body.

    Args:
        model: model name sent with each request.
        base_url: API root including ``/v1``; defaults to ``$OPENAI_BASE_URL`` or ``http://localhost:8000/v1``.
        api_key_env: environment variable holding the API key (sent as a bearer token when set).
        mode: ``"completions"`` (``/completions``, raw prompt) or ``"chat"`` (``/chat/completions``, one user turn).
        extra_body: extra JSON fields merged into every request (e.g. ``{"top_p": 0.95}``).
    """

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        mode: str = "completions",
        max_concurrency: int = 8,
        max_retries: int = 5,
        backoff: float = 1.0,
        max_backoff: float = 60.0,
        timeout: float = 300.0,
        extra_body: Mapping[str, Any] | None = None,
    ) -> None:
        if mode not in ("completions", "chat"):
            raise ValueError(f"mode must be 'completions' or 'chat', got {mode!r}.")
        self.model = model
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or "http://localhost:8000/v1").rstrip("/")
        self.api_key_env = api_key_env
        self.mode = mode
        self.max_concurrency = max_concurrency
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.timeout = timeout
        self.extra_body = dict(extra_body or {})

    @property
    def url(self) -> str:
        return f"{self.base_url}/{'chat/completions' if self.mode == 'chat' else 'completions'}"

    def _body(self, prompt: str, n: int, temperature: float, max_new_tokens: int, stop) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "n": n, "temperature": temperature, "max_tokens": max_new_tokens}
        if self.mode == "chat":
            body["messages"] = [{"role": "user", "content": prompt}]
        else:
            body["prompt"] = prompt
        if stop:
            body["stop"] = list(stop)
        body.update(self.extra_body)
        return body

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        data = json.dumps(body).encode()
        for attempt in range(self.max_retries + 1):
            wait = min(self.max_backoff, self.backoff * 2**attempt)
            try:
                req = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    return json.loads(resp.read().decode())
            except urllib.error.HTTPError as err:
                text = err.read().decode(errors="replace")[:2000]
                if err.code != 429 and err.code < 500:
                    raise GenerationError(
                        f"POST {self.url} returned HTTP {err.code}: {text}. Check the model name "
                        f"({self.model!r}), base_url and the API key in ${self.api_key_env}."
                    ) from None
                if attempt == self.max_retries:
                    raise GenerationError(
                        f"POST {self.url} still failing after {self.max_retries} retries: HTTP {err.code}: {text}"
                    ) from None
                retry_after = err.headers.get("Retry-After") if err.headers else None
                if retry_after is not None:
                    try:
                        wait = min(self.max_backoff, max(0.0, float(retry_after)))
                    except ValueError:
                        pass
            except (urllib.error.URLError, ConnectionError, TimeoutError) as err:
                if attempt == self.max_retries:
                    raise GenerationError(
                        f"Could not reach {self.url} after {self.max_retries} retries: {err}. "
                        "Is the server running and is base_url right?"
                    ) from None
            time.sleep(wait)
        raise AssertionError("unreachable")

    def _one(self, prompt: str, n: int, temperature: float, max_new_tokens: int, stop) -> list[str]:
        payload = self._post(self._body(prompt, n, temperature, max_new_tokens, stop))
        try:
            choices = sorted(payload["choices"], key=lambda c: c.get("index", 0))
            texts = [c["message"]["content"] if self.mode == "chat" else c["text"] for c in choices]
        except (KeyError, TypeError) as err:
            raise GenerationError(f"Unexpected response from {self.url}: {str(payload)[:500]}") from err
        return [_truncate_at_stop(t or "", stop) for t in texts]

    def generate(
        self,
        prompts: Sequence[str],
        n: int,
        temperature: float = 0.3,
        max_new_tokens: int = 512,
        stop: Sequence[str] | None = None,
        *,
        task_ids: Sequence[str] | None = None,
    ) -> list[list[str]]:
        with ThreadPoolExecutor(max_workers=max(1, self.max_concurrency)) as pool:
            return list(pool.map(lambda p: self._one(p, n, temperature, max_new_tokens, stop), prompts))

    def config(self) -> dict[str, Any]:
        return {
            "type": "openai",
            "model": self.model,
            "base_url": self.base_url,
            "mode": self.mode,
            "extra_body": self.extra_body,
        }


# --------------------------------------------------------------------------------------------------------------
# pool of sampled candidates
# --------------------------------------------------------------------------------------------------------------


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

    def _parses(self, code: str) -> bool:
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
        donors = [d for d in self.pool[task_id] if (skip is None or _normalise(d) != skip) and self._parses(d)]
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


def make_generator(kind: str, pool: Mapping[str, Sequence[str]] | None = None, **kwargs: Any) -> Generator:
    """Build a generator by name, for command lines and configs.

    ``"pool"``: :class:`PoolGenerator` over ``pool`` (``seed``); ``"openai"``: :class:`OpenAICompatibleGenerator`
    (``model``, ``base_url``, ``api_key_env``, ``mode``, ``max_concurrency``, ...); ``"transformers"``: loads
    ``model`` (a local path) with ``AutoModelForCausalLM`` / ``AutoTokenizer`` (``batch_size``,
    ``use_chat_template``, ``seed``). Keyword arguments that are None are dropped, so defaults apply.
    """
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if kind == "pool":
        if pool is None:
            raise ValueError("make_generator('pool') needs pool={task_id: [programs]}.")
        return PoolGenerator(pool, seed=kwargs.get("seed", 0))
    if kind == "openai":
        if "model" not in kwargs:
            raise ValueError("make_generator('openai') needs model=<served model name>.")
        keys = ("model", "base_url", "api_key_env", "mode", "max_concurrency", "max_retries", "timeout")
        return OpenAICompatibleGenerator(**{k: kwargs[k] for k in keys if k in kwargs})
    if kind == "transformers":
        if "model" not in kwargs:
            raise ValueError("make_generator('transformers') needs model=<local model path>.")
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(kwargs["model"]).eval()
        tokenizer = AutoTokenizer.from_pretrained(kwargs["model"])
        keys = ("batch_size", "use_chat_template", "seed")
        return TransformersGenerator(model, tokenizer, **{k: kwargs[k] for k in keys if k in kwargs})
    raise ValueError(f"Unknown generator {kind!r}; choose 'pool', 'openai' or 'transformers'.")
