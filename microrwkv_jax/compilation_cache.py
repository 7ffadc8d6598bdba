"""JAX's persistent compilation cache, on by default for train.py, sample.py and evaluation.

On a 2-core CPU most of a short command's time is compiling (most of `sample.py`'s wait for its
first token). With the cache, a second run with the same shapes loads each compiled function
from disk (BENCHMARKS.md: 4.0 s -> 1.0 s to the first token of the tiny model).

Where: $MICRORWKV_COMPILATION_CACHE if set, else $XDG_CACHE_HOME/microrwkv_jax/jax (by default
~/.cache/microrwkv_jax/jax). Off: `train.py --config.compilation_cache=False`,
`sample.py --no_compilation_cache`, or MICRORWKV_COMPILATION_CACHE=off. The cache holds only
XLA executables keyed by the program, the compiler options and the JAX/XLA version, so a stale
entry is never used; deleting the directory is always safe.
"""

from __future__ import annotations

import os
import pathlib
from typing import Optional

ENV_VAR = "MICRORWKV_COMPILATION_CACHE"
DISABLED = ("off", "0", "false", "none", "")


def cache_dir() -> Optional[pathlib.Path]:
    """The cache directory, or None when the environment turns the cache off."""
    value = os.environ.get(ENV_VAR)
    if value is not None:
        return None if value.strip().lower() in DISABLED else pathlib.Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(base) / "microrwkv_jax" / "jax"


def enable_compilation_cache(directory: Optional[pathlib.Path] = None) -> Optional[pathlib.Path]:
    """Point JAX's persistent compilation cache at `directory` (default: `cache_dir()`) and cache
    every compiled function, however quick to compile (JAX's default skips those under 1 s, which
    on this CPU are most of them). Returns the directory, or None when it is turned off or cannot
    be created (the run then compiles as usual)."""
    import jax

    directory = cache_dir() if directory is None else pathlib.Path(directory)
    if directory is None:
        return None
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return directory
