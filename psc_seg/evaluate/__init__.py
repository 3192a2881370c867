"""Scores of segmentations against ground truth: one sparse contingency table, then VI,
adapted Rand error and Dice from it (conventions in :mod:`psc_seg.evaluate.metrics`)."""

from psc_seg.evaluate.blockwise import contingency_tables_blockwise
from psc_seg.evaluate.metrics import (
    CONVENTIONS,
    adapted_rand_error,
    dice_scores,
    instance_scores,
    variation_of_information,
)
from psc_seg.evaluate.table import ContingencyTable, contingency_table, sum_tables

__all__ = [
    "CONVENTIONS",
    "ContingencyTable",
    "adapted_rand_error",
    "contingency_table",
    "contingency_tables_blockwise",
    "dice_scores",
    "instance_scores",
    "sum_tables",
    "variation_of_information",
]
