"""Training with Lightning and the entry points (compare.py, train.py)."""
