"""dreamprm_trl: function-as-step process reward models for code (DreamPRM-Code) on transformers, PEFT and TRL.

Public names are imported lazily so that ``import dreamprm_trl`` stays cheap and the sandbox, steps and metrics
work without torch.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0.dev0"

_EXPORTS = {
    "TestSuite": "sandbox",
    "ExecutionResult": "sandbox",
    "SandboxedExecutor": "sandbox",
    "execute": "sandbox",
    "execute_many": "sandbox",
    "isolation": "sandbox",
    "Problem": "problems",
    "load_humaneval": "problems",
    "load_mbpp": "problems",
    "load_classeval": "problems",
    "load_livecodebench": "problems",
    "problems_to_dataset": "problems",
    "problems_from_dataset": "problems",
    "Step": "steps",
    "split_steps": "steps",
    "split_lines": "steps",
    "split_program": "steps",
    "step_prefixes": "steps",
    "chain_of_function_prompt": "prompts",
    "extract_code": "steps",
    "COF_TEMPLATE_VERSION": "prompts",
    "Generator": "labeling.generators",
    "PoolGenerator": "labeling.generators",
    "TransformersGenerator": "labeling.generators",
    "OpenAICompatibleGenerator": "labeling.generators",
    "make_generator": "labeling.generators",
    "label_final": "labeling",
    "label_steps": "labeling",
    "step_ground_truth": "labeling",
    "ChainOfFunctionCollator": "prm",
    "FunctionStepPRM": "prm",
    "PRMConfig": "prm",
    "StepScores": "prm",
    "PRMOutput": "prm",
    "aggregate_scores": "prm",
    "step_loss": "prm",
    "rerank_metrics": "evaluation.metrics",
    "pass_at_k": "evaluation.metrics",
    "scaling_curve": "evaluation.metrics",
    "PASS_AT_1_RERANK": "evaluation.metrics",
    "FunctionStepPRMConfig": "training",
    "FunctionStepPRMTrainer": "training",
    "Ranked": "evaluation.rerank",
    "rerank": "evaluation.rerank",
    "rerank_many": "evaluation.rerank",
    "best_of_n": "evaluation.rerank",
    "ExperimentArguments": "scripts.experiment",
    "run_experiment": "scripts.experiment",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from .sandbox import ExecutionResult, SandboxedExecutor, TestSuite, execute, execute_many, isolation
    from .problems import (
        Problem, load_classeval, load_humaneval, load_livecodebench, load_mbpp, problems_from_dataset,
        problems_to_dataset,
    )
    from .steps import Step, extract_code, split_lines, split_program, split_steps, step_prefixes
    from .prompts import COF_TEMPLATE_VERSION, chain_of_function_prompt
    from .labeling.generators import (
        Generator, OpenAICompatibleGenerator, PoolGenerator, TransformersGenerator, make_generator,
    )
    from .labeling import label_final, label_steps, step_ground_truth
    from .prm import (
        ChainOfFunctionCollator, FunctionStepPRM, PRMConfig, PRMOutput, StepScores, aggregate_scores, step_loss,
    )
    from .evaluation.metrics import PASS_AT_1_RERANK, pass_at_k, rerank_metrics, scaling_curve
    from .training import FunctionStepPRMConfig, FunctionStepPRMTrainer
    from .evaluation.rerank import Ranked, best_of_n, rerank, rerank_many
    from .scripts.experiment import ExperimentArguments, run_experiment
