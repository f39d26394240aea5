"""Hub I/O over real HTTP against the local fake Hub in ``hub_server.py`` (the client is not mocked)."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from huggingface_hub import HfApi, hf_hub_download, snapshot_download

from hub_fixtures import TOKEN


def make_folder(root: Path) -> dict[str, bytes]:
    files = {
        "README.md": b"---\nlicense: apache-2.0\ntags:\n- process-reward-model\n---\n# A model\n",
        "config.json": json.dumps({"a": 1, "unicode": "\u00e9\u4e2d"}).encode(),
        "weights/head.bin": bytes(range(256)) * 40,
        "weights/empty.txt": b"",
        "nested/deeper/x.py": b"def f():\n    return 1\n",
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def read_tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_upload_folder_then_snapshot_download_is_byte_identical(local_hub, tmp_path):
    src = tmp_path / "src"
    files = make_folder(src)
    api = HfApi(endpoint=local_hub.url, token=TOKEN)
    repo = api.create_repo("org/roundtrip")
    assert repo.repo_id == "org/roundtrip"
    commit = api.upload_folder(repo_id="org/roundtrip", folder_path=src, commit_message="add files")

    assert local_hub.files("org/roundtrip") == dict(sorted(files.items()))  # bytes as stored server-side
    assert read_tree(local_hub.repo_dir("org/roundtrip")) == files
    assert sorted(api.list_repo_files("org/roundtrip")) == sorted(files)
    info = api.model_info("org/roundtrip")
    assert info.sha == commit.oid and {s.rfilename for s in info.siblings} == set(files)
    assert local_hub.commit_titles("org/roundtrip") == ["add files", "initial commit"]

    out = Path(snapshot_download("org/roundtrip", endpoint=local_hub.url, token=TOKEN, cache_dir=tmp_path / "c1"))
    assert out.name == commit.oid
    assert read_tree(out) == files
    methods = {m for m, p in local_hub.requests if "/resolve/" in p}
    assert methods == {"HEAD", "GET"}  # downloads went through the resolve endpoint


def test_default_endpoint_is_redirected_and_updates_are_incremental(local_hub, tmp_path):
    # No endpoint= anywhere: the fixture redirects the process-wide default to the fake Hub.
    api = HfApi()
    api.create_repo("org/incremental")
    src = tmp_path / "src"
    files = make_folder(src)
    api.upload_folder(repo_id="org/incremental", folder_path=src)
    n_commits = len(local_hub.commit_titles("org/incremental"))

    api.upload_folder(repo_id="org/incremental", folder_path=src)  # unchanged: the client skips the commit
    assert len(local_hub.commit_titles("org/incremental")) == n_commits

    (src / "config.json").write_bytes(b'{"a": 2}')
    (src / "nested/deeper/x.py").unlink()
    api.upload_folder(repo_id="org/incremental", folder_path=src, delete_patterns=["nested/**"], commit_message="v2")
    assert local_hub.commit_titles("org/incremental")[0] == "v2"
    stored = local_hub.files("org/incremental")
    assert stored["config.json"] == b'{"a": 2}' and "nested/deeper/x.py" not in stored
    assert stored["weights/head.bin"] == files["weights/head.bin"]

    path = hf_hub_download("org/incremental", "config.json")
    assert Path(path).read_bytes() == b'{"a": 2}' and str(tmp_path / "hf_cache") in path
    assert api.file_exists("org/incremental", "config.json")
    assert not api.file_exists("org/incremental", "missing.json")
    assert api.repo_exists("org/incremental") and not api.repo_exists("org/nothing")


def test_invalid_model_card_metadata_is_rejected(local_hub, tmp_path):
    api = HfApi()
    api.create_repo("org/badcard")
    with pytest.raises(ValueError, match="Invalid metadata"):
        api.upload_file(path_or_fileobj=b"---\n- [unclosed\n---\n", path_in_repo="README.md", repo_id="org/badcard")
    assert local_hub.files("org/badcard") == {}


def test_hf_endpoint_environment_variable_in_a_fresh_process(local_hub, tmp_path):
    """A new interpreter reads HF_ENDPOINT at import time: the path a CLI run would take."""
    src = tmp_path / "src"
    files = make_folder(src)
    script = textwrap.dedent(
        f"""
        from huggingface_hub import HfApi, snapshot_download
        api = HfApi()
        repo_id = api.create_repo("sub-proc-model").repo_id   # no namespace: the Hub adds the user's
        api.upload_folder(repo_id=repo_id, folder_path={str(src)!r})
        print(repo_id, snapshot_download(repo_id))
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], env=dict(os.environ), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    repo_id, out = proc.stdout.split()[-2:]
    assert repo_id == "local-user/sub-proc-model"
    assert read_tree(Path(out)) == files == local_hub.files(repo_id)


def test_function_step_prm_push_to_hub_then_from_pretrained_scores_identically(local_hub, tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import load as load_safetensors

    from dreamprm_trl.scripts.demo_backbones import tiny_causal_backbone
    from huggingface_hub import HfApi

    from dreamprm_trl.prm import FunctionStepPRM

    code = [
        "def add(a, b):\n    return a + b\n",
        "def helper(x):\n    return x * 2\n\n\ndef main():\n    return helper(1)\n",
    ]
    body, tok = tiny_causal_backbone(code * 20, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                                     vocab_size=300)
    prm = FunctionStepPRM.from_backbone(body, tokenizer=tok)
    with torch.no_grad():  # make the adapter and head matter, as after training
        gen = torch.Generator().manual_seed(0)
        for name, param in prm.named_parameters():
            if "lora_B" in name or name.startswith("head."):
                param.copy_(torch.randn(param.shape, generator=gen) * 0.5)
    card = "---\nlicense: apache-2.0\nlibrary_name: dreamprm_trl\ntags:\n- process-reward-model\n---\n# Tiny PRM\n"
    prm.push_to_hub("org/tiny-prm", commit_message="Upload tiny PRM")  # PreTrainedModel's push_to_hub
    HfApi().upload_file(path_or_fileobj=card.encode(), path_in_repo="README.md", repo_id="org/tiny-prm")

    files = local_hub.files("org/tiny-prm")
    for name in ("adapter_config.json", "adapter_model.safetensors", "model.safetensors", "config.json", "README.md"):
        assert name in files, f"{name} missing from {sorted(files)}"
    assert files["README.md"] == card.encode()
    assert "Upload tiny PRM" in local_hub.commit_titles("org/tiny-prm")
    trained = load_safetensors(files["model.safetensors"])
    assert torch.equal(trained["head.weight"], prm.head.weight) and torch.equal(trained["head.bias"], prm.head.bias)
    config = json.loads(files["config.json"])
    assert config["model_type"] == "function_step_prm" and config["step_token"] == prm.prm_config.step_token
    adapter = load_safetensors(files["adapter_model.safetensors"])
    assert any("lora_B" in k for k in adapter) and all(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)
    prm.save_pretrained(str(tmp_path / "local"))  # the upload is exactly what save_pretrained writes
    local = read_tree(tmp_path / "local")
    assert {k: v for k, v in files.items() if k != "README.md"} == {k: v for k, v in local.items() if k != "README.md"}

    reloaded = FunctionStepPRM.from_pretrained("org/tiny-prm")
    assert any(m == "GET" and "/org/tiny-prm/resolve/" in p for m, p in local_hub.requests)
    pairs = [("Add two numbers.", c) for c in code]
    before = prm.score_batch(pairs, progress=False)
    after = reloaded.score_batch(pairs, progress=False)
    for b, a in zip(before, after):
        assert a.steps == b.steps
        assert a.scores == pytest.approx(b.scores, abs=1e-6)
    assert len({round(s, 4) for b in before for s in b.scores}) > 1  # scores are not all the same constant

    # The CLI takes the Hub id too: `dreamprm-code rerank --model org/tiny-prm ...`
    from dreamprm_trl.cli import main
    from dreamprm_trl.problems import Problem

    (tmp_path / "problems.jsonl").write_text(json.dumps(Problem(task_id="t", prompt="Add two numbers.").to_row()))
    (tmp_path / "cands.jsonl").write_text("".join(json.dumps({"task_id": "t", "code": c}) + "\n" for c in code))
    out = tmp_path / "ranked.jsonl"
    assert main(["rerank", "--model", "org/tiny-prm", "--problems", str(tmp_path / "problems.jsonl"),
                 "--candidates", str(tmp_path / "cands.jsonl"), "--out", str(out), "--no_progress"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    expected = sorted(((b.aggregate("min"), -i) for i, b in enumerate(before)), reverse=True)
    assert [r["candidate_index"] for r in rows] == [-i for _, i in expected]
    assert [r["score"] for r in rows] == pytest.approx([s for s, _ in expected], abs=1e-6)


def test_trainer_push_to_hub_uploads_a_loadable_prm_with_model_card(local_hub, tmp_path):
    pytest.importorskip("torch")
    sys.path.insert(0, str(Path(__file__).parent / "scripts"))
    from tiny_prm import noisy_task, tiny_prm

    from dreamprm_trl import FunctionStepPRMConfig, FunctionStepPRMTrainer
    from dreamprm_trl.prm import FunctionStepPRM

    train, meta, _ = noisy_task(n_train=8, n_meta=4)
    config = FunctionStepPRMConfig(
        output_dir=str(tmp_path / "out"), use_cpu=True, report_to="none", save_strategy="no", disable_tqdm=True,
        max_steps=2, per_device_train_batch_size=4, learning_rate=1e-2, meta_batch_size=4,
        push_to_hub=True, hub_model_id="org/trained-prm", hub_strategy="end",
    )
    trainer = FunctionStepPRMTrainer(tiny_prm(lora=True), config, train_dataset=train, meta_dataset=meta)
    trainer.train()
    trainer.push_to_hub(commit_message="End of training")

    files = local_hub.files("org/trained-prm")
    for name in ("adapter_config.json", "adapter_model.safetensors", "model.safetensors", "config.json", "README.md"):
        assert name in files, f"{name} missing from {sorted(files)}"
    card = files["README.md"].decode()
    assert card.startswith("---\n") and "dreamprm" in card.lower()
    from huggingface_hub import ModelCard  # the card is a valid Hub card, laid out like TRL's

    card_data = ModelCard(card).data
    assert card_data.library_name == "transformers" and "dreamprm-code" in card_data.tags
    assert card_data.model_name == "trained-prm"
    import peft
    import transformers

    assert f"- transformers: {transformers.__version__}" in card and f"- peft: {peft.__version__}" in card
    assert "@article{dreamprmcode2025" in card and "arXiv 2512.15000" in card
    assert local_hub.commit_titles("org/trained-prm")[0] == "End of training"

    prm = trainer.accelerator.unwrap_model(trainer.model)
    reloaded = FunctionStepPRM.from_pretrained("org/trained-prm")
    pairs = [(row["prompt"], row["steps"]) for row in meta]
    expected = prm.score_batch(pairs, progress=False)
    got = reloaded.score_batch(pairs, progress=False)
    assert [g.scores for g in got] == [pytest.approx(e.scores, abs=1e-6) for e in expected]
