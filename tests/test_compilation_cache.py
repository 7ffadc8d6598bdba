"""JAX's persistent compilation cache: on by default for the scripts, a second compile is a hit."""

import os
import subprocess
import sys

import pytest

from tests.helpers import REPO

# A fresh process: JAX's in-memory caches start empty, so every compile consults the disk cache.
COMPILE_TWICE = """
import sys
import jax, jax.numpy as jnp
from microrwkv_jax.compilation_cache import enable_compilation_cache
hits = []
jax.monitoring.register_event_listener(lambda event, **kw: hits.append(event)
                                       if event == "/jax/compilation_cache/cache_hits" else None)
print(enable_compilation_cache())
f = lambda x: jnp.tanh(x) @ x.T
jax.jit(f).lower(jax.ShapeDtypeStruct((8, 8), jnp.float32)).compile()
assert hits == [], hits
jax.clear_caches()
jax.jit(f).lower(jax.ShapeDtypeStruct((8, 8), jnp.float32)).compile()
print(len(hits))
"""


def test_a_second_compile_of_the_same_function_is_a_cache_hit(tmp_path):
    env = {**os.environ, "MICRORWKV_COMPILATION_CACHE": str(tmp_path / "jax-cache")}
    done = subprocess.run([sys.executable, "-c", COMPILE_TWICE], capture_output=True, text=True, cwd=REPO, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    directory, hits = done.stdout.split()
    assert directory == str(tmp_path / "jax-cache") and int(hits) == 1
    assert any((tmp_path / "jax-cache").iterdir())


@pytest.mark.parametrize("value, expected", [("off", None), ("", None), ("/x/y", "/x/y")])
def test_the_environment_moves_or_turns_off_the_cache(monkeypatch, value, expected):
    from microrwkv_jax.compilation_cache import cache_dir
    monkeypatch.setenv("MICRORWKV_COMPILATION_CACHE", value)
    assert (None if cache_dir() is None else str(cache_dir())) == expected
    monkeypatch.delenv("MICRORWKV_COMPILATION_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", "/cache/home")
    assert str(cache_dir()) == "/cache/home/microrwkv_jax/jax"


@pytest.mark.slow
def test_sample_py_compiles_once_then_loads_from_the_cache(tmp_path):
    """Two runs of sample.py on one checkpoint: the second compiles nothing (every compile is a
    persistent-cache hit, as JAX logs with JAX_LOG_COMPILES); --no_compilation_cache misses."""
    from flax import nnx

    from microrwkv_jax import LanguageModel
    from microrwkv_jax.checkpoints import save_model_dir
    from tests.helpers import tiny_config

    model = LanguageModel(tiny_config("hybrid", vocab_size=257), rngs=nnx.Rngs(1))
    save_model_dir(tmp_path / "model", model, {"model": model.config.to_dict(), "tokenizer": "byte"})
    env = {**os.environ, "MICRORWKV_COMPILATION_CACHE": str(tmp_path / "jax-cache"), "JAX_LOG_COMPILES": "1"}

    def sample(*flags):
        done = subprocess.run([sys.executable, str(REPO / "sample.py"), "--ckpt", str(tmp_path / "model"),
                               "--prompt", "One day", "--max_new_tokens", "20", *flags],
                              capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stderr

    first, second, uncached = sample(), sample(), sample("--no_compilation_cache")
    assert "Persistent compilation cache hit" not in first
    compiled = first.count("Finished XLA compilation of ")
    assert compiled >= 3 and second.count("Persistent compilation cache hit") == compiled     # prefill, decode x2
    assert "Persistent compilation cache hit" not in uncached
