"""The package's version: the one place it is written.

pyproject.toml reads it from here (setuptools ``attr:``, parsed without importing the package),
so the installed metadata and ``pipeline.__version__`` cannot disagree, and nothing at start-up
has to import importlib.metadata to learn it (about 40 ms of every command on a slow machine:
it pulls in email, zipfile and csv).
"""

__version__ = "0.1.0"
