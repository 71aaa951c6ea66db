"""Data: readers, long-tailed subsets, image datasets and transforms, built-in demo data."""

from dbloss.data.table import MultiLabelSet

__all__ = ["MultiLabelSet"]
