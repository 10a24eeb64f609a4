"""Per-device latency tables and the predictor built on them (issue 15).

``build_table`` times every distinct block of the given networks on this machine and runtime;
``Predictor(table).predict(model)`` sums the block entries (a fitted per-type model for blocks
the table lacks) plus a fitted per-network overhead.
"""

from edgevision.latency.blocks import Unit, decompose
from edgevision.latency.predictor import (
    Prediction,
    Predictor,
    UnknownBlockError,
    predict_latency,
)
from edgevision.latency.table import (
    FORMAT,
    LatencyTableWarning,
    build_table,
    check_table,
    load_table,
    save_table,
    validate_table,
)

__all__ = ["FORMAT", "LatencyTableWarning", "Prediction", "Predictor", "Unit", "UnknownBlockError",
           "build_table", "check_table", "decompose", "load_table", "predict_latency", "save_table",
           "validate_table"]
