"""The names of an output directory's parts (design.md §2), apart from the code that fills them:
``status`` reads the layout without importing the HTTP download machinery of results.py."""

from __future__ import annotations

VIDEOS_DIR = "videos"
REPLACED_DIR = "replaced"
CONFLICTS_DIR = "conflicts"
METADATA_FILE = "metadata.jsonl"
PART_PREFIX = ".part-"
