"""Where things live. Every location can be overridden by an argument or an environment variable.

- ``SAMBOOK_DATA``: the data root (see :mod:`lib.data`). Default: ``<repo>/data``, or
  ``<repo>/../shared/data`` when only that one exists (a checkout with the shared data beside it);
  a download goes to ``$SAMBOOK_DATA`` or ``<repo>/data``, never there.
- ``SAMBOOK_OUTPUTS``: where runs, figures, tables and notebooks go. Default: ``<repo>/outputs``.
"""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The data root: the argument, else ``$SAMBOOK_DATA``, else ``<repo>/data``.

    When ``<repo>/data`` does not exist but ``<repo>/../shared/data`` does (the layout of a checkout
    with the shared data folder beside it), that one is the default, so ``make book`` needs no
    variable there. ``<repo>/data`` stays the download target otherwise.
    """
    if root is not None:
        return Path(root).expanduser().resolve()
    env = os.environ.get("SAMBOOK_DATA")
    if env:
        return Path(env).expanduser().resolve()
    own, beside = REPO_ROOT / "data", REPO_ROOT.parent / "shared" / "data"
    if not own.exists() and beside.is_dir():
        return beside.resolve()
    return own


def download_root() -> Path:
    """Where ``--download`` puts the official files: ``$SAMBOOK_DATA``, else ``<repo>/data`` (never the
    shared folder beside the checkout that :func:`data_root` falls back to for reading)."""
    return data_root() if os.environ.get("SAMBOOK_DATA") else REPO_ROOT / "data"


def outputs_root(root: str | os.PathLike | None = None) -> Path:
    """The outputs root: the argument, else ``$SAMBOOK_OUTPUTS``, else ``<repo>/outputs``."""
    if root is not None:
        return Path(root).expanduser().resolve()
    env = os.environ.get("SAMBOOK_OUTPUTS")
    if env:
        return Path(env).expanduser().resolve()
    return REPO_ROOT / "outputs"


def runs_root(root: str | os.PathLike | None = None) -> Path:
    """Cached runs: the argument, else ``$SAMBOOK_RUNS``, else ``<outputs>/runs``."""
    if root is not None:
        return Path(root).expanduser().resolve()
    env = os.environ.get("SAMBOOK_RUNS")
    if env:
        return Path(env).expanduser().resolve()
    return outputs_root() / "runs"


def committed_runs_root() -> Path:
    """The run results committed with the book (``<repo>/outputs/runs``), whatever the cache settings."""
    return REPO_ROOT / "outputs" / "runs"


def cache_root() -> Path:
    """Decoded-dataset cache: ``$SAMBOOK_CACHE`` or ``<outputs>/cache`` (gitignored)."""
    env = os.environ.get("SAMBOOK_CACHE")
    return Path(env).expanduser().resolve() if env else outputs_root() / "cache"
