"""Generators: prompt/program assembly, the pool policy's grafting rule, a tiny local LM, and an OpenAI-compatible
server over loopback (real HTTP round trips, retries, errors, concurrency)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from dreamprm_trl.labeling.generators import (
    GenerationError,
    Generator,
    OpenAICompatibleGenerator,
    PoolGenerator,
    RolloutRequest,
    TransformersGenerator,
    assemble_program,
    complete_prefixes,
    rollout_prompt,
)

MAIN = "def main(x):\n    return helper_a(x) + helper_b(x)\n\n"
A_GOOD, A_BAD = "def helper_a(x):\n    return 2 * x\n\n", "def helper_a(x):\n    return 2 * x + 1\n\n"
B_GOOD, B_BAD = "def helper_b(x):\n    return x + 1\n", "def helper_b(x):\n    return x - 1\n"


# ---------------------------------------------------------------------------------------------------- assembly


def test_assemble_program_continuation_and_chat_answers():
    prefix = "import math\n\ndef f(x):\n    return g(x)\n"
    assert assemble_program(prefix, "\ndef g(x):\n    return 1\n```\nprose") == prefix + "\ndef g(x):\n    return 1\n"
    restated = "Sure:\n```python\nimport math\n\ndef f(x):\n    return g(x)\n\ndef g(x):\n    return 2\n```\n"
    whole = "import math\n\ndef f(x):\n    return g(x)\n\ndef g(x):\n    return 2\n"
    assert assemble_program(prefix, restated) == whole
    only_rest = "```python\ndef g(x):\n    return 3\n```"
    assert assemble_program(prefix, only_rest) == prefix + "def g(x):\n    return 3\n"
    assert assemble_program("def f():", "\n    return 1") == "def f():\n    return 1"


def test_rollout_prompt_ends_with_open_code_block_holding_the_prefix():
    text = rollout_prompt(RolloutRequest("t", "Add two numbers.", "def add(a, b):\n"))
    assert text.startswith("Add two numbers.")
    assert text.endswith("```python\ndef add(a, b):\n")


# ---------------------------------------------------------------------------------------------------- pool


def test_pool_grafts_by_name_excludes_source_and_cycles_deterministically():
    own = MAIN + A_GOOD + B_GOOD
    pool = {"t": [own, MAIN + A_GOOD + B_BAD, MAIN + A_BAD + B_GOOD]}
    gen = PoolGenerator(pool, seed=3)
    assert isinstance(gen, Generator)
    outs = gen.generate_for("t", MAIN + A_GOOD, n=4, exclude=own)
    # donors are the two other programs; the prefix already defines main and helper_a, so only helper_b is grafted
    assert sorted(set(outs)) == sorted({B_BAD, B_GOOD})
    assert len(outs) == 4 and outs[:2].count(B_BAD) == 1  # each donor once before any repeats
    assert gen.generate_for("t", MAIN + A_GOOD, n=4, exclude=own) == outs  # seeded by (seed, task, prefix)
    programs = complete_prefixes(gen, [RolloutRequest("t", "", MAIN + A_GOOD, exclude=own)], n=2)[0]
    assert sorted(programs) == sorted([MAIN + A_GOOD + B_GOOD, MAIN + A_GOOD + B_BAD])


def test_pool_falls_back_to_position_when_names_disagree_and_carries_imports():
    donor = "import math\n\ndef main(x):\n    return other(x)\n\ndef other(x):\n    return math.floor(x)\n"
    gen = PoolGenerator({"t": [donor]})
    prefix = "def solve(x):\n    return x\n\n"  # name 'solve' not in the donor: position 1 onwards is grafted
    (completion,) = gen.generate_for("t", prefix, n=1)
    assert completion == "def other(x):\n    return math.floor(x)\nimport math\n"
    by_name = gen.generate_for("t", "def main(x):\n    return other(x)\n\n", n=1)[0]
    assert by_name == "def other(x):\n    return math.floor(x)\nimport math\n"


def test_pool_methods_graft_into_the_class_and_errors_are_clear():
    head = "class C:\n    def __init__(self):\n        self.v = 1\n\n"
    m1 = "    def get(self):\n        return self.v\n\n"
    m2 = "    def inc(self):\n        self.v += 1\n"
    gen = PoolGenerator({"t": [head + m1 + m2, "def broken(:\n"]})
    assert gen.generate_for("t", head + m1, n=3) == [m2, m2, m2]  # the unparsable candidate is never a donor
    assert gen.generate_for("t", head, n=2, exclude=head + m1 + m2) == []
    with pytest.raises(KeyError, match="no candidates for task 'zzz'"):
        gen.generate_for("zzz", head, n=1)
    with pytest.raises(ValueError, match="task_ids"):
        gen.generate([head], n=1)
    assert gen.generate([head + m1], 1, task_ids=["t"]) == [[m2]]
    assert gen.config()["type"] == "pool" and gen.config() != PoolGenerator({"t": [m1]}).config()


# ---------------------------------------------------------------------------------------------------- transformers


@pytest.fixture(scope="module")
def tiny_lm():
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM, LlamaConfig

    from dreamprm_trl.scripts.demo_backbones import train_bytelevel_tokenizer

    tok = train_bytelevel_tokenizer([MAIN + A_GOOD + B_GOOD] * 20, vocab_size=300)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id)
    return AutoModelForCausalLM.from_config(cfg).eval(), tok


def test_transformers_generator_batches_and_matches_a_manual_greedy_decode(tiny_lm):
    import torch

    model, tok = tiny_lm
    gen = TransformersGenerator(model, tok, batch_size=2, use_chat_template=False)
    prompts = ["def main(x):", "def helper_a(x):\n    return", "def f"]
    outs = gen.generate(prompts, n=2, temperature=0.0, max_new_tokens=6)
    assert [len(o) for o in outs] == [2, 2, 2] and all(o[0] == o[1] for o in outs)
    ids = tok(prompts[2], return_tensors="pt")
    with torch.no_grad():
        ref = model.generate(**ids, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
    assert outs[2][0] == tok.decode(ref[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    sampled = gen.generate(prompts[:1], n=3, temperature=1.0, max_new_tokens=8)
    assert sampled == gen.generate(prompts[:1], n=3, temperature=1.0, max_new_tokens=8)  # seeded
    text = outs[0][0]
    assert len(text) >= 2
    cut = gen.generate(prompts[:1], n=1, temperature=0.0, max_new_tokens=6, stop=[text[1]])[0][0]
    assert cut == text[: text.find(text[1])]
    assert gen.config()["type"] == "transformers" and gen.config()["num_parameters"] > 0


def test_transformers_generator_applies_the_chat_template(tiny_lm):
    model, tok = tiny_lm
    tok.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}<assistant>"
    try:
        gen = TransformersGenerator(model, tok)
        assert gen.use_chat_template
        assert gen.format("hi") == "<user>hi<assistant>"
        plain = TransformersGenerator(model, tok, use_chat_template=False)
        (chat_out,) = gen.generate(["hi"], n=1, temperature=0.0, max_new_tokens=5)
        (raw_out,) = plain.generate(["<user>hi<assistant>"], n=1, temperature=0.0, max_new_tokens=5)
        assert chat_out == raw_out
    finally:
        tok.chat_template = None


# ---------------------------------------------------------------------------------------------------- HTTP


class _Server:
    """A loopback OpenAI-compatible server answering from a script of (status, headers, body) replies."""

    def __init__(self, script=None, delay=0.0):
        self.requests, self.script, self.delay = [], list(script or []), delay
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    outer.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                    outer.in_flight += 1
                    outer.max_in_flight = max(outer.max_in_flight, outer.in_flight)
                    step = outer.script.pop(0) if outer.script else None
                time.sleep(outer.delay)
                status, headers, payload = step or (200, {}, outer.answer(self.path, body))
                data = (payload if isinstance(payload, str) else json.dumps(payload)).encode()
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                with outer.lock:
                    outer.in_flight -= 1

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @staticmethod
    def answer(path, body):
        text = body.get("prompt") or body["messages"][-1]["content"]
        if path.endswith("/chat/completions"):
            choices = [{"index": i, "message": {"role": "assistant", "content": f"{text}#{i}"}}
                       for i in reversed(range(body["n"]))]
        else:
            choices = [{"index": i, "text": f"{text}#{i}"} for i in reversed(range(body["n"]))]
        return {"choices": choices}

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_openai_completions_round_trip_sends_key_and_sampling(monkeypatch):
    monkeypatch.setenv("MY_KEY", "sekret")
    with _Server() as server:
        gen = OpenAICompatibleGenerator("tiny", base_url=server.url, api_key_env="MY_KEY", extra_body={"top_p": 0.9})
        outs = gen.generate(["a", "b"], n=3, temperature=0.3, max_new_tokens=7, stop=["#2"])
    assert outs == [["a#0", "a#1", "a"], ["b#0", "b#1", "b"]]  # choices re-ordered by index, cut at the stop text
    path, headers, body = server.requests[0]
    assert path == "/v1/completions" and headers["authorization"] == "Bearer sekret"
    assert body == {"model": "tiny", "n": 3, "temperature": 0.3, "max_tokens": 7, "prompt": body["prompt"],
                    "stop": ["#2"], "top_p": 0.9}


def test_openai_chat_mode_and_no_key(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with _Server() as server:
        gen = OpenAICompatibleGenerator("tiny", base_url=server.url, mode="chat")
        assert gen.generate(["hello"], n=2, temperature=0.0, max_new_tokens=4) == [["hello#0", "hello#1"]]
    path, headers, body = server.requests[0]
    assert path == "/v1/chat/completions" and "authorization" not in headers
    assert body["messages"] == [{"role": "user", "content": "hello"}]


def test_openai_retries_429_and_5xx_honouring_retry_after():
    script = [(429, {"Retry-After": "0.3"}, "slow down"), (503, {}, "busy")]
    with _Server(script) as server:
        gen = OpenAICompatibleGenerator("tiny", base_url=server.url)
        start = time.perf_counter()
        assert gen.generate(["x"], n=1, temperature=0.0, max_new_tokens=1) == [["x#0"]]
        elapsed = time.perf_counter() - start
    assert len(server.requests) == 3 and 0.3 <= elapsed < 3.0


def test_openai_4xx_raises_with_status_and_body_and_retries_run_out():
    with _Server([(400, {}, '{"error": "model tiny does not exist"}')]) as server:
        gen = OpenAICompatibleGenerator("tiny", base_url=server.url)
        with pytest.raises(GenerationError, match=r"HTTP 400.*model tiny does not exist"):
            gen.generate(["x"], n=1, temperature=0.0, max_new_tokens=1)
        assert len(server.requests) == 1  # never retried
    with _Server([(500, {}, "boom")] * 3) as server:
        gen = OpenAICompatibleGenerator("tiny", base_url=server.url, max_retries=2)
        with pytest.raises(GenerationError, match=r"after 2 retries: HTTP 500: boom"):
            gen.generate(["x"], n=1, temperature=0.0, max_new_tokens=1)
        assert len(server.requests) == 3
        dead = server.url  # the port closes with the server
    gen = OpenAICompatibleGenerator("tiny", base_url=dead, max_retries=1, timeout=2)
    with pytest.raises(GenerationError, match="Could not reach .* after 1 retries"):
        gen.generate(["x"], n=1, temperature=0.0, max_new_tokens=1)


def test_openai_concurrency_limit_and_text_generators_drive_complete_prefixes():
    with _Server(delay=0.1) as server:
        gen = OpenAICompatibleGenerator("tiny", base_url=server.url, max_concurrency=2)
        outs = gen.generate([f"p{i}" for i in range(6)], n=1, temperature=0.0, max_new_tokens=1)
        assert outs == [[f"p{i}#0"] for i in range(6)] and server.max_in_flight == 2
        programs = complete_prefixes(gen, [RolloutRequest("t", "Task.", "def f():\n")], n=1)
    # the echo answer holds the prompt's open code block (prefix + "#0"): that block restates the prefix, so it is
    # taken as the whole program
    assert programs == [["def f():\n#0"]]
