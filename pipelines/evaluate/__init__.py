"""The evaluation job's wing: quality of a preset against references, next to plain interpolation."""
