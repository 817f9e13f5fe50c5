"""Shared fixtures. Tests never reach the hub; tiers are marked by folder.

- tests/unit: tiny seeded models, each test well under a second or two.
- tests/integration: the real MiniLM and SmolLM2, the CLI in a subprocess.
- tests/contracts: parametrized over the compression registry and the shipped recipes.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

TIERS = ("unit", "integration", "contracts")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for tier in TIERS:
            if f"{os.sep}{tier}{os.sep}" in str(item.fspath):
                item.add_marker(getattr(pytest.mark, tier))
        if "gpu" in item.keywords:
            import torch

            if not torch.cuda.is_available():
                item.add_marker(pytest.mark.skip(reason="needs CUDA"))


@pytest.fixture(autouse=True)
def _restore_torch_state():
    import torch

    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    yield
    torch.set_default_dtype(dtype)
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_bert():
    from slimforge.models.load import load_model

    return load_model("builtin:tiny-bert")


@pytest.fixture
def tiny_llama():
    from slimforge.models.load import load_model

    return load_model("builtin:tiny-llama")


@pytest.fixture(scope="session")
def minilm():
    from slimforge.models.load import load_model

    return load_model("builtin:minilm")


@pytest.fixture(scope="session")
def smollm2():
    from slimforge.models.load import load_model

    return load_model("builtin:smollm2")
