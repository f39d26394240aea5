"""The training stage: `FunctionStepPRMTrainer` (a `transformers.Trainer`) and its meta label correction.

- `config`: `FunctionStepPRMConfig`, the `TrainingArguments` of the trainer (shares ``loss_type``,
  ``aggregation``... with `prm.PRMConfig` under the same names);
- `formats`: the dataset formats the trainer accepts (`FORMATS`) and their conversion to step rows;
- `meta_methods`: one table class per meta method behind one interface (`MetaTable`: targets, inner gradient,
  results), `build_table`, and `weighted_step_loss`, the inner loss;
- `hypergradient`: the pure maths: `label_loss_grad`, DARTS, exact and implicit (Neumann) hypergradients,
  `standardise_hypergradient`;
- `splits`: `split_by_task`, train and meta rows with disjoint problems;
- `meta_step`: the meta step as a mixin of the trainer (warm-up, meta batch and loss, hypergradient, update);
- `checkpoints`: resuming from the last complete checkpoint, the meta table's state in each checkpoint;
- `scale`: loading backbones with ``model_init_kwargs``, adapters, the meta step's precision rules;
- `model_card`: the trained PRM's `huggingface_hub.ModelCard`;
- `trainer`: `FunctionStepPRMTrainer`: construction, the Trainer hooks, calling the meta step.
"""

from .checkpoints import META_STATE_NAME, last_complete_checkpoint
from .config import META_LEARNING_RATES, META_METHODS, PRM_FIELDS, FunctionStepPRMConfig
from .formats import FORMATS, prepare_dataset
from .hypergradient import (
    adam_preconditioner, darts_hypergradient, exact_hypergradient, implicit_hypergradient, label_loss_grad,
    neumann_inverse_hvp, standardise_hypergradient, unrolled_meta_loss,
)
from .meta_methods import META_TABLES, LabelTable, MetaTable, WeightTable, build_table, weighted_step_loss
from .splits import split_by_task
from .trainer import FunctionStepPRMTrainer

__all__ = [
    "FORMATS", "META_LEARNING_RATES", "META_METHODS", "META_STATE_NAME", "META_TABLES", "PRM_FIELDS",
    "FunctionStepPRMConfig", "FunctionStepPRMTrainer", "LabelTable", "MetaTable", "WeightTable",
    "adam_preconditioner", "build_table", "darts_hypergradient", "exact_hypergradient", "implicit_hypergradient",
    "label_loss_grad", "last_complete_checkpoint", "neumann_inverse_hvp", "prepare_dataset", "split_by_task",
    "standardise_hypergradient", "unrolled_meta_loss", "weighted_step_loss",
]
