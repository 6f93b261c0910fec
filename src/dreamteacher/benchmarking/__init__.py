"""The label-efficient benchmark: every method in one harness (run.py), cached cells."""
