import pytest

from tests.helpers import GPT2_BPE_VARIABLE, gpt2_bpe_path


@pytest.fixture
def gpt2_bpe():
    """The GPT-2 BPE file; the test is skipped, with the reason, when it is not available."""
    path = gpt2_bpe_path()
    if path is None:
        pytest.skip(f"GPT-2 BPE file not available: set {GPT2_BPE_VARIABLE} to tiktoken's r50k_base/gpt2 BPE file")
    return path
