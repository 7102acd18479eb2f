"""The DAG's nodes, one file each, named as the stage's output directory; base.py is their framework."""
