"""``dreamprm-code`` command line. It parses arguments and calls library functions; it holds no logic.

Each command is one ``add_<name>_command(subparsers)`` function that registers its parser and sets
``func``; add a command by writing one and listing it in :data:`COMMANDS`. ``train`` is registered as a
placeholder that takes every token after it, which `dreamprm_trl.scripts.train.main` parses with a `trl.TrlParser`
(dataclass flags and ``--config``), the way ``trl sft`` does.

Bad input never ends in a traceback: a usage error, or an exception `_user_errors` lists (a missing file, a
malformed row, an unknown task id, the missing opt-in: ``ValueError``, ``OSError``, ...), is printed as one line
naming the file, row or flag and the fix, and the command exits with code 2 (`EXIT_USAGE`). Warnings are one
line too.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

EXIT_USAGE = 2  # argparse's exit code for bad arguments; also used for bad input files


class _OneLineErrors:
    """Parser mixin: usage errors are one line (no usage dump) and exit with `EXIT_USAGE`."""

    def error(self, message: str) -> None:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _Parser(_OneLineErrors, argparse.ArgumentParser):
    """The ``dreamprm-code`` parser and its ``label`` / ``train`` / ``rerank`` subparsers."""


def _positive(kind: type) -> Callable[[str], Any]:
    """An argparse ``type`` that accepts only positive values of ``kind``."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}")
        return value

    return parse


def _shard(text: str) -> str:
    from .labeling import parse_shard

    try:
        parse_shard(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def _load(flag: str, load: Callable[..., Any], *args: Any) -> Any:
    """``load(*args)``, with any input error's message prefixed by the flag that named the input."""
    try:
        return load(*args)
    except (ValueError, OSError) as err:
        raise ValueError(f"{flag}: {err}") from None


def _require_opt_in(args: argparse.Namespace) -> None:
    """Refuse, before any work, to run programs without ``--allow_code_execution`` (or the opt-in variable)."""
    from .sandbox.limits import OPT_IN_ENV

    if not args.allow_code_execution and os.environ.get(OPT_IN_ENV, "") != "1":
        raise PermissionError(
            f"this command runs model-written programs: pass --allow_code_execution (or set {OPT_IN_ENV}=1) to "
            "accept the risk; they run in a sandbox, but untrusted code is never entirely safe"
        )


def _add_labeling_args(p: argparse.ArgumentParser) -> None:
    from .labeling import DEFAULT_MAX_CODE_CHARS

    p.add_argument("--problems", required=True,
                   help="'humaneval', 'classeval' (bundled), a save_to_disk directory or a JSON/JSONL file of "
                        "Problem.to_row() rows.")
    p.add_argument("--candidates", required=True,
                   help="'humaneval' / 'classeval' (bundled candidates) or a JSONL(.gz) file of "
                        "{task_id, code} or {task_id, completion} rows.")
    p.add_argument("--output_dir", required=True,
                   help="Dataset directory (save_to_disk); OUTPUT_DIR.jsonl and OUTPUT_DIR.stats.json go beside it.")
    p.add_argument("--shard", type=_shard, default="0/1",
                   help="Label only shard i of n ('i/n'); deterministic by content.")
    p.add_argument("--cache_dir", default=None, help="Resumable on-disk cache; rerun the same command to resume.")
    p.add_argument("--max_code_chars", type=_positive(int), default=DEFAULT_MAX_CODE_CHARS,
                   help="Longer programs are skipped as bad rows ('too large').")
    _add_sandbox_args(p)
    p.add_argument("--push_to_hub", default=None, metavar="REPO_ID", help="Also push the dataset to this Hub repo.")
    p.add_argument("--no_progress", action="store_true", help="Hide progress bars.")


def _add_sandbox_args(p: argparse.ArgumentParser) -> None:
    """The sandbox flags shared by every command that runs programs (defaults: `sandbox.limits`)."""
    from .sandbox.limits import DEFAULT_MEMORY_MB, DEFAULT_TIMEOUT

    p.add_argument("--timeout", type=_positive(float), default=DEFAULT_TIMEOUT, help="Seconds per test case.")
    p.add_argument("--memory_mb", type=_positive(int), default=DEFAULT_MEMORY_MB,
                   help="Memory limit per program (MiB).")
    p.add_argument("--workers", type=_positive(int), default=None, help="Parallel programs (default: CPU count).")
    p.add_argument("--allow_code_execution", action="store_true",
                   help="Run the (untrusted) programs in the sandbox; same as setting HF_ALLOW_CODE_EVAL=1.")


def _executor(args: argparse.Namespace):
    from .sandbox import SandboxedExecutor

    return SandboxedExecutor(timeout=args.timeout, memory_mb=args.memory_mb, workers=args.workers, progress=False,
                             allow_code_execution=args.allow_code_execution)


def _label_final(args: argparse.Namespace) -> int:
    from .labeling import label_final, save_labels
    from .problems import load_candidates, load_problems

    _require_opt_in(args)
    problems = _load("--problems", load_problems, args.problems)
    candidates = _load("--candidates", load_candidates, args.candidates, problems)
    ds, stats = label_final(problems, candidates, executor=_executor(args), cache_dir=args.cache_dir,
                            shard=args.shard, progress=not args.no_progress, return_stats=True,
                            max_code_chars=args.max_code_chars)
    out = save_labels(ds, args.output_dir, stats, args.push_to_hub)
    print(f"{stats.summary()}\nwrote {out}")
    return 0


def _label_steps(args: argparse.Namespace) -> int:
    from .labeling import label_steps, save_labels
    from .labeling.generators import make_generator
    from .problems import load_candidates, load_problems

    _require_opt_in(args)
    if args.generator != "pool" and not args.model:
        raise ValueError(f"--generator {args.generator} needs --model (the served model name or a local path)")
    problems = _load("--problems", load_problems, args.problems)
    candidates = _load("--candidates", load_candidates, args.candidates, problems)
    pool = _load("--pool", load_candidates, args.pool, problems) if args.pool else candidates
    generator = make_generator(
        args.generator, pool=pool, seed=args.seed, model=args.model, base_url=args.base_url,
        api_key_env=args.api_key_env, mode=args.mode, max_concurrency=args.max_concurrency,
        batch_size=args.batch_size,
    )
    ds, stats = label_steps(problems, candidates, generator, rollouts=args.rollouts, temperature=args.temperature,
                            executor=_executor(args), cache_dir=args.cache_dir, shard=args.shard,
                            max_new_tokens=args.max_new_tokens, source=args.source,
                            progress=not args.no_progress, return_stats=True,
                            max_code_chars=args.max_code_chars, max_steps=args.max_steps)
    out = save_labels(ds, args.output_dir, stats, args.push_to_hub)
    print(f"{stats.summary()}\nwrote {out}")
    return 0


def add_label_command(subparsers: argparse._SubParsersAction) -> None:
    from .labeling import DEFAULT_MAX_STEPS

    label = subparsers.add_parser("label", help="Label candidate programs: clean verdicts or Monte-Carlo steps.")
    kinds = label.add_subparsers(dest="label_kind", required=True)

    final = kinds.add_parser("final", help="Whole-program pass/fail labels (the clean meta set).")
    _add_labeling_args(final)
    final.set_defaults(func=_label_final)

    steps = kinds.add_parser("steps", help="Monte-Carlo step labels from rollouts of every prefix.")
    _add_labeling_args(steps)
    steps.add_argument("--generator", choices=("pool", "openai", "transformers"), default="pool",
                       help="Policy that completes prefixes.")
    steps.add_argument("--pool", default=None, help="Pool generator: donor programs (default: --candidates).")
    steps.add_argument("--seed", type=int, default=None, help="Pool / transformers sampling seed.")
    steps.add_argument("--model", default=None, help="Served model name (openai) or local model path (transformers).")
    steps.add_argument("--base_url", default=None, help="OpenAI-compatible API root (default $OPENAI_BASE_URL).")
    steps.add_argument("--api_key_env", default=None, help="Environment variable holding the API key.")
    steps.add_argument("--mode", choices=("completions", "chat"), default=None, help="OpenAI endpoint.")
    steps.add_argument("--max_concurrency", type=_positive(int), default=None, help="OpenAI requests in flight.")
    steps.add_argument("--batch_size", type=_positive(int), default=None,
                       help="Transformers prompts per generate call.")
    steps.add_argument("--rollouts", type=_positive(int), default=16, help="Completions per prefix (M).")
    steps.add_argument("--max_steps", type=_positive(int), default=DEFAULT_MAX_STEPS,
                       help="Programs with more steps are skipped as bad rows ('too many steps'): each step but the "
                            "last is rolled out --rollouts times.")
    steps.add_argument("--temperature", type=float, default=0.3, help="Sampling temperature.")
    steps.add_argument("--max_new_tokens", type=_positive(int), default=512, help="Tokens per completion.")
    steps.add_argument("--source", default="", help="Value of the 'source' column (default: the problem's).")
    steps.set_defaults(func=_label_steps)


def _rerank(args: argparse.Namespace) -> int:
    import json

    from .evaluation.rerank import rerank_file

    if args.public_tests:
        _require_opt_in(args)
    summary = rerank_file(args.model, args.problems, args.candidates, args.out, aggregation=args.aggregation,
                          public_tests=args.public_tests, batch_size=args.batch_size, executor=_executor(args),
                          progress=not args.no_progress, splitter=args.splitter)
    print(json.dumps(summary, indent=2))
    return 0


def add_rerank_command(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("rerank", help="Rank candidate programs per problem with a PRM (best-of-N).")
    p.add_argument("--model", required=True, help="PRM directory (save_pretrained) or Hub repo id.")
    p.add_argument("--problems", required=True,
                   help="'humaneval', 'classeval', a save_to_disk directory or a JSON/JSONL file of Problem rows.")
    p.add_argument("--candidates", required=True,
                   help="'humaneval' / 'classeval' (bundled) or a JSONL(.gz) file of {task_id, code|completion, "
                        "...} rows; with 'passed' on every row the summary reports reranked vs random vs oracle.")
    p.add_argument("--out", required=True, help="Output JSONL: input rows plus rank, score, step_scores.")
    p.add_argument("--aggregation", default=None,
                   help="How step scores become one program score: min, mean, last, prod or logodds "
                        "(default: the aggregation the PRM was saved with).")
    from .steps import SPLITTERS

    p.add_argument("--splitter", default=None, choices=sorted(SPLITTERS),
                   help="How candidates are cut into steps (default: the splitter the PRM was trained with).")
    p.add_argument("--public_tests", action="store_true",
                   help="Hybrid: candidates failing the problem's public tests rank last.")
    p.add_argument("--batch_size", type=_positive(int), default=8, help="Candidates per forward pass.")
    _add_sandbox_args(p)
    p.add_argument("--no_progress", action="store_true", help="Hide progress bars.")
    p.set_defaults(func=_rerank)


def _train(args: argparse.Namespace) -> int:
    from trl import TrlParser

    from .scripts.train import main as train_main

    class TrainParser(_OneLineErrors, TrlParser):
        """`TrlParser` with the CLI's one-line usage errors."""

    train_main(args.train_argv, prog="dreamprm-code train", parser_class=TrainParser)
    return 0


def add_train_command(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train", add_help=False,
        help="Label, train the PRM variants and print the reranking table (examples/train.py's flags: the model, "
             "data files or the bundled sets, every FunctionStepPRMConfig field, --config FILE.yaml; see "
             "'dreamprm-code train --help').",
    )
    p.set_defaults(func=_train)


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [add_label_command, add_train_command,
                                                                 add_rerank_command]


def build_parser() -> argparse.ArgumentParser:
    """The ``dreamprm-code`` parser with every command of `COMMANDS`."""
    from . import __version__

    parser = _Parser(prog="dreamprm-code", description="DreamPRM-Code: process reward models for code.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(subparsers)
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input or a missing opt-in, not a bug: reported in one line, exit code 2."""
    from .labeling.generators import GenerationError

    return (ValueError, OSError, ImportError, GenerationError)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dreamprm-code`` console script; returns the exit code (2 for bad input)."""
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "train":  # every token after `train` is the training parser's (see `add_train_command`)
        args.train_argv = rest
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    prog = " ".join(filter(None, [parser.prog, args.command, getattr(args, "label_kind", None)]))

    def one_line(message: Any, *_args: Any, **_kwargs: Any) -> None:
        print(f"{prog}: warning: {' '.join(str(message).split())}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = one_line
        try:
            return args.func(args)
        except _user_errors() as err:
            message = " ".join(str(err).split()) or type(err).__name__
            print(f"{prog}: error: {message}", file=sys.stderr)
            return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
