import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    from rlhf_lightning.models.tiny import build_tiny_model

    return str(build_tiny_model(tmp_path_factory.mktemp("tiny-llama"), "llama"))


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory):
    from rlhf_lightning.models.tiny import build_tiny_model

    return str(build_tiny_model(tmp_path_factory.mktemp("tiny-gpt2"), "gpt2"))


@pytest.fixture(scope="session")
def char_tokenizer():
    from rlhf_lightning.models.tiny import build_char_tokenizer

    return build_char_tokenizer()


@pytest.fixture(scope="session")
def embedded_tokenizer():
    """SmolLM2-135M-Instruct's tokenizer: a real chat template that injects a default system prompt."""
    from rlhf_lightning.models import load_tokenizer

    return load_tokenizer("embedded")
