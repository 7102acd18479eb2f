"""Markdown for the reports: one table writer for every table the report and the study print.

Kept rather than pandas' `to_markdown` (tabulate): tabulate pads every cell to its column's width
and re-parses numeric-looking strings with one float format ("1.11" epochs would print "1.110", a
"50/51" cell stays text), and turns NaN into an empty cell; with numbers pre-formatted and parsing
off, what remains is the join below, and the reports keep one compact, grep-able row per line."""
from __future__ import annotations


def md_table(header: list[str], rows: list[list]) -> list[str]:
    """A Markdown table; floats with three decimals, everything else as str()."""
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
