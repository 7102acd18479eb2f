"""Sampling: the backends behind one interface (backends.py) and the project's own engine, cb (engine.py)."""
