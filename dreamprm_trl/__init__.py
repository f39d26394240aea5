"""dreamprm_trl: function-as-step process reward models for code (DreamPRM-Code) on transformers, PEFT and TRL.

Public names are imported lazily so that ``import dreamprm_trl`` stays cheap and the sandbox, steps and metrics
work without torch.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0.dev0"

_EXPORTS = {
    "TestSuite": "execution",
    "ExecutionResult": "execution",
    "SandboxedExecutor": "execution",
    "execute": "execution",
    "execute_many": "execution",
    "Problem": "tasks",
    "Step": "steps",
    "split_steps": "steps",
    "split_lines": "steps",
    "step_prefixes": "steps",
    "chain_of_function_prompt": "steps",
    "extract_code": "steps",
    "PoolGenerator": "generation",
    "TransformersGenerator": "generation",
    "OpenAICompatibleGenerator": "generation",
    "label_final": "labeling",
    "label_steps": "labeling",
    "ChainOfFunctionCollator": "collator",
    "FunctionStepPRM": "modeling",
    "StepScores": "modeling",
    "rerank_metrics": "metrics",
    "PASS_AT_1_RERANK": "metrics",
    "FunctionStepPRMConfig": "config",
    "FunctionStepPRMTrainer": "trainer",
    "rerank": "rerank",
    "best_of_n": "rerank",
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


if TYPE_CHECKING:  # pragma: no cover
    from .collator import ChainOfFunctionCollator
    from .config import FunctionStepPRMConfig
    from .execution import ExecutionResult, SandboxedExecutor, TestSuite, execute, execute_many
    from .modeling import FunctionStepPRM, StepScores
    from .steps import Step, split_steps
    from .trainer import FunctionStepPRMTrainer
