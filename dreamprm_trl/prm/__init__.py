"""The model stage: the process reward model, its input format and its training maths.

- `inputs`: the PRM's input format, defined once (step and whitespace tokens, `encode_steps`);
- `collator`: `ChainOfFunctionCollator`, batches of step rows in that format;
- `losses`: `step_loss`, `smoothed_targets` and `aggregate_scores` (pure tensor maths);
- `config`: `PRMConfig`, the model's ``config.json``;
- `lora`: LoRA defaults (`LORA_DEFAULTS`), default targets and the PEFT wrap;
- `backbones`: loading a backbone and its tokenizer (Hub, local, the packaged MiniLM);
- `model`: `FunctionStepPRM` (construction and forward), with `checkpoint` (save, load, merge, export) and
  `scoring` (`StepScores`, `score`, `program_scores`) mixed in.

Importing this package registers `PRMConfig` and `FunctionStepPRM` with `AutoConfig` and `AutoModel`, so
``AutoModel.from_pretrained(path)`` loads a saved PRM.
"""

from .collator import ChainOfFunctionCollator
from .config import FORMAT_VERSION, PRMConfig
from .inputs import STEP_TOKEN, EncodedSteps, code_to_steps, effective_prompt, encode_steps, prepare_tokenizer
from .losses import AGGREGATIONS, LOSS_TYPES, aggregate_scores, smoothed_targets, step_loss
from .lora import LORA_DEFAULTS, default_lora_config, default_lora_targets
from .model import FunctionStepPRM, PRMOutput
from .scoring import StepScores

__all__ = [
    "AGGREGATIONS", "FORMAT_VERSION", "LORA_DEFAULTS", "LOSS_TYPES", "STEP_TOKEN", "ChainOfFunctionCollator",
    "EncodedSteps", "FunctionStepPRM", "PRMConfig", "PRMOutput", "StepScores", "aggregate_scores", "code_to_steps",
    "default_lora_config", "default_lora_targets", "effective_prompt", "encode_steps", "prepare_tokenizer",
    "smoothed_targets", "step_loss",
]
