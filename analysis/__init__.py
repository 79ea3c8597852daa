"""FLOPs accounting, FLOPs-to-match and the comparison report."""
