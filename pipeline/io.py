"""Kept for pipeline/toyworld.py alone (now pipeline/core/io.py): its checkpoint hash covers its own
import lines (HASHED_SOURCES), so it still imports this path; goes when toyworld.py moves."""
from pipeline.core.io import atomic_dir, read_jsonl  # noqa: F401
