"""nnmem: how much memory a neural network needs, and whether it fits, before anything runs."""

from nnmem.categories import Category, Mode, Phase
from nnmem.errors import NnmemError
from nnmem.estimate import estimate
from nnmem.measure import measure
from nnmem.report import Breakdown, LayerRow, Peak, Report

__all__ = [
    "Breakdown",
    "Category",
    "LayerRow",
    "Mode",
    "NnmemError",
    "Peak",
    "Phase",
    "Report",
    "estimate",
    "measure",
]
__version__ = "0.1.0"
