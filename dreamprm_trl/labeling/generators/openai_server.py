"""Any OpenAI-compatible server (``vllm serve``, OpenAI, TGI, ...) as a rollout policy, through the ``openai`` client.

The client does the HTTP work this module used to hand-write: connection pooling, retries of 408/409/429/5xx and
connection failures with exponential backoff and jitter, and ``Retry-After``. Install it with
``pip install dreamprm-trl[serve]``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .base import GenerationError, truncate_at_stop

__all__ = ["OpenAICompatibleGenerator"]


def _openai() -> Any:
    try:
        import openai
    except ImportError:
        raise ImportError(
            "OpenAICompatibleGenerator needs the `openai` client: pip install 'dreamprm-trl[serve]' (or openai)."
        ) from None
    return openai


class OpenAICompatibleGenerator:
    """Sample from any OpenAI-compatible server over HTTP.

    One request per prompt (``n`` choices each), at most ``max_concurrency`` in flight. The ``openai`` client
    retries 429, 5xx and connection failures up to ``max_retries`` times (exponential backoff from 0.5 s, capped
    at 8 s, or the server's ``Retry-After``); any other 4xx, or the last failure, raises :class:`GenerationError`
    naming the status and the response body.

    Args:
        model: model name sent with each request.
        base_url: API root including ``/v1``; defaults to ``$OPENAI_BASE_URL`` or ``http://localhost:8000/v1``.
        api_key_env: environment variable holding the API key (sent as a bearer token when set).
        mode: ``"completions"`` (``/completions``, raw prompt) or ``"chat"`` (``/chat/completions``, one user turn).
        timeout: seconds per request attempt.
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
        self.timeout = timeout
        self.extra_body = dict(extra_body or {})

    @property
    def url(self) -> str:
        return f"{self.base_url}/{'chat/completions' if self.mode == 'chat' else 'completions'}"

    def _client(self) -> Any:
        openai = _openai()
        key = os.environ.get(self.api_key_env)
        # Without a key (a local server needs none) the client still wants one: a placeholder, never sent (`_one`).
        return openai.OpenAI(base_url=self.base_url, api_key=key or "unused", max_retries=self.max_retries,
                             timeout=self.timeout)

    def _one(self, client: Any, prompt: str, n: int, temperature: float, max_new_tokens: int, stop) -> list[str]:
        openai = _openai()
        kwargs: dict[str, Any] = {"model": self.model, "n": n, "temperature": temperature, "max_tokens": max_new_tokens}
        if stop:
            kwargs["stop"] = list(stop)
        if self.extra_body:
            kwargs["extra_body"] = self.extra_body
        if not os.environ.get(self.api_key_env):
            kwargs["extra_headers"] = {"Authorization": openai.Omit()}
        try:
            if self.mode == "chat":
                reply = client.chat.completions.create(messages=[{"role": "user", "content": prompt}], **kwargs)
            else:
                reply = client.completions.create(prompt=prompt, **kwargs)
        except openai.APIStatusError as err:
            retried = err.status_code in (408, 409, 429) or err.status_code >= 500
            text = err.response.text[:2000]
            if retried:
                raise GenerationError(
                    f"POST {self.url} still failing after {self.max_retries} retries: HTTP {err.status_code}: {text}"
                ) from None
            raise GenerationError(
                f"POST {self.url} returned HTTP {err.status_code}: {text}. Check the model name ({self.model!r}), "
                f"base_url and the API key in ${self.api_key_env}."
            ) from None
        except openai.APIConnectionError as err:
            raise GenerationError(
                f"Could not reach {self.url} after {self.max_retries} retries: {err}. Is the server running and is "
                "base_url right?"
            ) from None
        choices = sorted(reply.choices, key=lambda c: c.index or 0)
        texts = [c.message.content if self.mode == "chat" else c.text for c in choices]
        return [truncate_at_stop(t or "", stop) for t in texts]

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
        with self._client() as client, ThreadPoolExecutor(max_workers=max(1, self.max_concurrency)) as pool:
            return list(pool.map(lambda p: self._one(client, p, n, temperature, max_new_tokens, stop), prompts))

    def config(self) -> dict[str, Any]:
        return {
            "type": "openai",
            "model": self.model,
            "base_url": self.base_url,
            "mode": self.mode,
            "extra_body": self.extra_body,
        }
