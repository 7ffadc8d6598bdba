import os
import tempfile

import pytest

from tests.helpers import GPT2_BPE_VARIABLE, gpt2_bpe_path

# train.py and sample.py use JAX's persistent compilation cache by default. The tests, and every
# script they run, share one that lives as long as the test session, never the user's own.
_COMPILATION_CACHE = tempfile.TemporaryDirectory(prefix="microrwkv-test-jax-cache-")
os.environ["MICRORWKV_COMPILATION_CACHE"] = _COMPILATION_CACHE.name


@pytest.fixture
def gpt2_bpe():
    """The GPT-2 BPE file; the test is skipped, with the reason, when it is not available."""
    path = gpt2_bpe_path()
    if path is None:
        pytest.skip(f"GPT-2 BPE file not available: set {GPT2_BPE_VARIABLE} to tiktoken's r50k_base/gpt2 BPE file")
    return path


# The longest tests (every README command, about 7 minutes in CI; every family on every mesh,
# 2.5; a run moved between meshes, 1) go first, in this order, so that they run beside the rest
# of the suite on the other worker instead of being its tail.
LONGEST_FIRST = ("tests/test_readme.py::", "tests/training/test_sharding.py::test_every_family_gives_the_same_numbers",
                 "tests/training/test_trainer.py::test_a_run_moves_between_meshes")


def pytest_collection_modifyitems(config, items):
    def rank(item):
        return next((i for i, prefix in enumerate(LONGEST_FIRST) if item.nodeid.startswith(prefix)), len(LONGEST_FIRST))

    items.sort(key=rank)
