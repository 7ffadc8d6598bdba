"""Paths a user gives, made absolute once where they enter the library.

Libraries below us have rules of their own about relative paths (orbax's
`StandardCheckpointer().metadata()` swallows its own error on one and returns no metadata), so
every checkpoint, run directory, dataset, tokenizer file and cache directory is turned into an
absolute path by `user_path` before anything reads it; `shown_path` gives it back as the user
would type it (relative to the working directory when it lies under it) for messages.
"""

from __future__ import annotations

import os
import pathlib


def user_path(path) -> pathlib.Path:
    """`path` (str or Path, `~` allowed) as an absolute path, resolved against the working directory now.
    Symlinks are kept as they are (`absolute`, not `resolve`)."""
    return pathlib.Path(os.path.expanduser(os.fspath(path))).absolute()


def user_pattern(pattern: str) -> str:
    """A path or glob pattern (`data/*.txt`) made absolute in the same way; the pattern is kept."""
    return str(user_path(pattern))


def shown_path(path) -> str:
    """`path` for a message: relative to the working directory when it lies under it, else absolute."""
    path = pathlib.Path(path)
    try:
        return str(path.absolute().relative_to(pathlib.Path.cwd()))
    except ValueError:
        return str(path)
