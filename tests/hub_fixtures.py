"""Pytest fixture pointing ``huggingface_hub`` at a local fake Hub over real HTTP (no client mocking).

Registered for every test module by ``pytest_plugins`` in ``conftest.py``. ``huggingface_hub`` reads
``HF_ENDPOINT``, ``HF_HUB_OFFLINE`` and the cache location into ``huggingface_hub.constants`` at import time, so
setting the environment is not enough inside an already running interpreter: the fixture patches those constants
*and* the environment (for subprocesses and libraries that read the variables directly, e.g. PEFT), and restores
everything afterwards. The rest of the suite stays offline.
"""

from __future__ import annotations

import pytest

from hub_server import FakeHub

TOKEN = "hf_local_fake_hub_token"


@pytest.fixture
def local_hub(tmp_path, monkeypatch) -> FakeHub:
    """A running :class:`FakeHub`; ``huggingface_hub`` calls without ``endpoint=`` go to it."""
    from huggingface_hub import constants

    hub = FakeHub(tmp_path / "hub_storage").start()
    cache = tmp_path / "hf_cache"
    env = {
        "HF_ENDPOINT": hub.url,
        "HF_HUB_OFFLINE": "0",
        "TRANSFORMERS_OFFLINE": "0",
        "HF_TOKEN": TOKEN,
        "HF_HOME": str(tmp_path / "hf_home"),
        "HF_HUB_CACHE": str(cache),
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HUGGINGFACE_HUB_CACHE", str(cache), raising=False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True, raising=False)
    try:  # transformers keeps one shared HfApi (endpoint fixed at creation): start a fresh one for this hub
        import transformers.utils.hub as transformers_hub

        monkeypatch.setattr(transformers_hub, "_hf_api", None, raising=False)
    except ImportError:  # pragma: no cover - transformers is optional for the Hub-only tests
        pass
    try:
        yield hub
    finally:
        hub.stop()
