"""What the report computes: pass@k and its intervals, the analyses, plots, training health and its probe."""
