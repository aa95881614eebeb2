"""Figures and tables for the book: one place decides where they go and how they are written."""
from __future__ import annotations

import os
from pathlib import Path

from . import paths
from .io import atomic_write, write_text


def figures_dir(outputs: str | os.PathLike | None = None) -> Path:
    return paths.outputs_root(outputs) / "figures"


def tables_dir(outputs: str | os.PathLike | None = None) -> Path:
    return paths.outputs_root(outputs) / "tables"


def savefig(fig, name: str, outputs: str | os.PathLike | None = None, dpi: int = 120) -> Path:
    """Save a matplotlib figure as ``outputs/figures/<name>.png`` (atomically) and return the path."""
    target = figures_dir(outputs) / f"{name}.png"
    atomic_write(target, lambda p: fig.savefig(p, dpi=dpi, bbox_inches="tight", format="png"))
    return target


def save_table(df, name: str, outputs: str | os.PathLike | None = None, floatfmt: str = ".2f",
               caption: str | None = None) -> dict[str, Path]:
    """Write a pandas DataFrame as CSV, Markdown and LaTeX under ``outputs/tables/``."""
    base = tables_dir(outputs)
    out = {
        "csv": write_text(base / f"{name}.csv", df.to_csv(index=True)),
        "md": write_text(base / f"{name}.md", _to_markdown(df, floatfmt, caption)),
        "tex": write_text(base / f"{name}.tex", _to_latex(df, floatfmt, caption)),
    }
    return out


def _fmt(v, floatfmt: str) -> str:
    if isinstance(v, float):
        return "" if v != v else format(v, floatfmt)
    return str(v)


def _to_markdown(df, floatfmt: str, caption: str | None) -> str:
    idx = df.index.name or ""
    cols = [str(c) for c in df.columns]
    lines = []
    if caption:
        lines += [caption, ""]
    lines.append("| " + " | ".join([idx] + cols) + " |")
    lines.append("|" + "---|" * (len(cols) + 1))
    for key, row in df.iterrows():
        lines.append("| " + " | ".join([str(key)] + [_fmt(v, floatfmt) for v in row]) + " |")
    return "\n".join(lines) + "\n"


def _to_latex(df, floatfmt: str, caption: str | None) -> str:
    def esc(s: str) -> str:
        return s.replace("_", r"\_").replace("%", r"\%").replace("&", r"\&")

    lines = []
    if caption:
        lines.append(f"% {caption}")
    lines.append("% " + " & ".join([esc(df.index.name or "")] + [esc(str(c)) for c in df.columns]))
    for key, row in df.iterrows():
        lines.append(" & ".join([esc(str(key))] + [esc(_fmt(v, floatfmt)) for v in row]) + r" \\")
    return "\n".join(lines) + "\n"


def banner(profile: str, data_description: str) -> str:
    """The sentence every chapter prints first: which profile and which data made its numbers."""
    from .config import PROFILES
    p = PROFILES[profile]
    lines = [f"Profile: {profile} ({p.description}; network width {p.width}, {p.epochs} epochs)."]
    if profile == "smoke":
        lines.append("SMOKE NUMBERS: a tiny network trained for seconds on a CPU. They show that the code runs, "
                     "not what the paper's claims look like.")
    lines.append(f"Data: {data_description}.")
    return "\n".join(lines)


def rel(path) -> str:
    """A path relative to the repository (so printed output is the same on every machine)."""
    from pathlib import Path
    p = Path(path).resolve()
    try:
        return str(p.relative_to(paths.REPO_ROOT))
    except ValueError:
        return p.name
