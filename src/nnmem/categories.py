"""The closed vocabularies of nnmem: memory categories and step modes."""

from __future__ import annotations

import enum
import sys

if sys.version_info >= (3, 11):
    StrEnum = enum.StrEnum
else:  # Python 3.10

    class StrEnum(str, enum.Enum):
        """`enum.StrEnum` for Python 3.10: members are strings and print as their value."""

        def __str__(self) -> str:
            return str(self.value)


class Category(StrEnum):
    """What a piece of memory is for."""

    PARAMETER = "parameter"
    BUFFER = "buffer"
    INPUT = "input"
    ACTIVATION = "activation"  # created in forward, alive when forward ends (saved for backward)
    GRADIENT = "gradient"
    OPTIMIZER_STATE = "optimizer_state"
    TEMPORARY = "temporary"  # created and freed within one phase of the step
    WORKSPACE = "workspace"  # allocated and freed inside one kernel, invisible to the dispatcher
    KV_CACHE = "kv_cache"
    OTHER = "other"  # measured bytes that a measurement cannot attribute to a category


class Mode(StrEnum):
    """Which step is run."""

    INFERENCE = "inference"
    TRAIN = "train"
    GENERATE = "generate"


class Phase(StrEnum):
    """Where in the step a moment lies."""

    SETUP = "setup"
    FORWARD = "forward"
    BACKWARD = "backward"
    OPTIMIZER = "optimizer"
    ZERO_GRAD = "zero_grad"
