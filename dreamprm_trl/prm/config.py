"""`PRMConfig`: the `FunctionStepPRM`'s ``config.json`` (``model_type="function_step_prm"``), registered with
`AutoConfig`. ``FORMAT_VERSION`` is the checkpoint format this library writes; it refuses newer ones."""

from __future__ import annotations

from typing import Any, ClassVar

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from ..steps import SPLITTERS
from .inputs import STEP_TOKEN
from .losses import AGGREGATIONS, LOSS_TYPES

FORMAT_VERSION = 2


@strict(accept_kwargs=True)
class PRMConfig(PreTrainedConfig):
    """Configuration of `FunctionStepPRM` (``config.json``, ``model_type="function_step_prm"``).

    ``text_config`` is the backbone's own config (any `AutoModel` architecture); the other fields say how steps are
    marked, read and scored. ``backbone`` and ``backbone_source`` say where the frozen backbone weights of a LoRA
    checkpoint come from (``hub``/``local``: that name or path; ``package``: the packaged MiniLM; ``saved``: the
    ``backbone/`` folder next to the adapter). A merged or fully fine-tuned checkpoint holds every weight itself.
    """

    model_type: ClassVar[str] = "function_step_prm"
    sub_configs_defaults: ClassVar[dict] = {"text_config": SubConfigSpec(config_class=AutoConfig, model_type="qwen2")}

    text_config: dict | PreTrainedConfig | None = None
    backbone: str | None = None
    backbone_source: str = "hub"
    step_token: str = STEP_TOKEN
    new_token_ids: list[int] | None = None
    backbone_is_causal: bool = True
    causal_mask: bool = True
    lora: bool = False
    aggregation: str = "min"
    label_format: str = "soft"  # step labels are probabilities in [0, 1] (Monte-Carlo pass rates)
    loss_type: str = "bce"
    label_smoothing: float = 0.0
    max_length: int = 1024
    step_splitter: str = "function"  # the `steps.SPLITTERS` name the PRM was trained with; rerank splits by it
    backbone_attn_implementation: str | None = None
    format_version: int = FORMAT_VERSION

    def __post_init__(self, **kwargs: Any) -> None:
        super().__post_init__(**kwargs)
        if self.format_version > FORMAT_VERSION:
            raise ValueError(
                f"PRMConfig format_version {self.format_version} is newer than this library's ({FORMAT_VERSION}); "
                "upgrade dreamprm-trl."
            )
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"PRMConfig.aggregation={self.aggregation!r}; choose one of {AGGREGATIONS}.")
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"PRMConfig.loss_type={self.loss_type!r}; choose one of {LOSS_TYPES}.")
        if self.step_splitter not in SPLITTERS:
            raise ValueError(f"PRMConfig.step_splitter={self.step_splitter!r}; choose one of {sorted(SPLITTERS)}.")
        self.new_token_ids = list(self.new_token_ids or [])


AutoConfig.register(PRMConfig.model_type, PRMConfig)
