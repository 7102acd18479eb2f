"""Markdown for the reports: one table writer for every table the report and the study print."""
from __future__ import annotations


def md_table(header: list[str], rows: list[list]) -> list[str]:
    """A Markdown table; floats with three decimals, everything else as str()."""
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
