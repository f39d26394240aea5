"""The PRM's model card: a `huggingface_hub.ModelCard` laid out like TRL's (metadata with base model, datasets and
tags; quick start; method and results; framework versions; citation BibTeX), rendered from
``model_cards/prm_model_card.md`` (shipped as ``dreamprm_trl/templates``)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from ..prm import FunctionStepPRM
    from .trainer import FunctionStepPRMTrainer

MODEL_CARD_TEMPLATE = "prm_model_card.md"

CITATION = """@article{dreamprmcode2025,
  title   = {DreamPRM-Code: Function-as-Step Process Reward Model with Label Correction for LLM Coding},
  journal = {arXiv preprint arXiv:2512.15000},
  year    = {2025}
}"""


def _template_path() -> str:
    packaged = resources.files("dreamprm_trl").joinpath("templates", MODEL_CARD_TEMPLATE)
    if packaged.is_file():
        return str(packaged)
    return str(Path(__file__).resolve().parents[2] / "model_cards" / MODEL_CARD_TEMPLATE)


def _lora_summary(prm: FunctionStepPRM) -> str:
    peft_config = getattr(prm.backbone, "peft_config", None)
    if not prm.prm_config.lora or not peft_config:
        return "none, full fine-tuning"
    cfg = next(iter(peft_config.values()))
    targets = ", ".join(sorted(cfg.target_modules)) if cfg.target_modules else "default"
    return f"r={cfg.r}, alpha={cfg.lora_alpha}, dropout={cfg.lora_dropout} on {targets}"


def _metrics_table(log_history: list[dict]) -> str:
    keep = ("loss", "meta/loss", "meta/label_shift", "meta/labels_crossed")
    latest: dict[str, float] = {}
    for entry in log_history:
        for k, v in entry.items():
            if isinstance(v, (int, float)) and (k.startswith("eval_") or k in keep):
                latest[k] = v
    if not latest:
        return "No metrics logged yet."
    rows = "\n".join(f"| {k} | {v:.4g} |" for k, v in sorted(latest.items()))
    return "| metric | value |\n|---|---|\n" + rows


def _framework_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("dreamprm-trl", "transformers", "peft", "trl", "torch", "datasets", "tokenizers"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def build_model_card(
    trainer: FunctionStepPRMTrainer,
    model_name: str | None = None,
    dataset_name: str | list[str] | None = None,
    tags: str | list[str] | None = None,
) -> Any:
    """The PRM's `huggingface_hub.ModelCard`, laid out like TRL's cards: metadata (base model, datasets, tags),
    how to score a candidate, the training method and results, framework versions and citation BibTeX."""
    from huggingface_hub import ModelCard, ModelCardData

    args = trainer.args
    prm = trainer.accelerator.unwrap_model(trainer.model)
    cfg = prm.prm_config
    hub_base = cfg.backbone if cfg.backbone and cfg.backbone_source == "hub" else None
    datasets = [dataset_name] if isinstance(dataset_name, str) else list(dataset_name or []) or None
    tags = [tags] if isinstance(tags, str) else list(tags or [])
    name = model_name or args.hub_model_id or Path(args.output_dir).name
    method = {
        "label_correction": "meta label correction (bi-level, learnable step labels, "
        f"{args.hypergradient} hypergradient)",
        "sample_reweighting": f"meta sample reweighting (bi-level, a learnable weight per row, {args.hypergradient})",
        "none": "plain PRM training on Monte-Carlo step labels (no meta learning)",
    }[args.meta_method]
    card_data = ModelCardData(
        base_model=hub_base,
        datasets=datasets,
        library_name="transformers",
        model_name=name,
        tags=list(dict.fromkeys(["generated_from_trainer", *trainer._tag_names, *tags])),
    )
    return ModelCard.from_template(
        card_data,
        template_path=_template_path(),
        model_name=name,
        base_model=cfg.backbone or "a backbone built from a config",
        hub_base_model=hub_base,
        datasets=", ".join(datasets or [])
        or "step rows with Monte-Carlo labels + whole programs with unit-test verdicts",
        method=method,
        aggregation=args.aggregation,
        step_token=cfg.step_token,
        num_train_rows=len(trainer.noisy_labels),
        num_meta_rows=len(trainer.meta_dataset) if trainer.meta_dataset is not None else 0,
        learning_rate=args.learning_rate,
        meta_learning_rate=args.meta_learning_rate,
        loss_type=args.loss_type,
        lora=_lora_summary(prm),
        global_step=trainer.state.global_step,
        metrics_table=_metrics_table(trainer.state.log_history),
        repo_id=args.hub_model_id or name,
        versions=_framework_versions(),
        citation=CITATION,
    )

