"""Baselines run in the same harness: self-supervised methods from lightly (ssl.py)."""
