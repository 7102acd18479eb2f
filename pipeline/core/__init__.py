"""Shared plumbing: atomic files and locks, stage processes, MLflow tracking, stage identities."""
