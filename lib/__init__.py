"""sambook: the code behind the chapters.

Chapters import from here; nothing here imports from chapters. Every function takes paths as
arguments (or reads the documented environment variables) and never assumes a working directory.

Modules: data, models, optim (SAM/ASAM), attacks (PGD and baselines), train (one loop, step
strategies), evaluate, config (frozen run configs and profiles), runs (cached results), theory (the
paper's toy model), report (figures and tables for the book), cli (``python -m lib``).
"""

__all__ = ["__version__"]
__version__ = "0.1.0"
