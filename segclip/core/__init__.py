"""The exact decomposition: the attention pool from its parameters, per-head weights, the trace with its hook
points, pair directions and the calibration artifact. Imports nothing of segclip above it."""
from segclip.core.attnpool import AttentionPool, HeadWeights
from segclip.core.calibration import Calibration, load_calibration
from segclip.core.info import ModelInfo
from segclip.core.pairs import PairDirections
from segclip.core.trace import (
           HOOK_POINTS,
           RegisterIntervention,
           Trace,
           token_head_contributions,
           trace_pool,
)

__all__ = ["HOOK_POINTS", "AttentionPool", "Calibration", "HeadWeights", "ModelInfo", "PairDirections",
           "RegisterIntervention", "Trace", "load_calibration", "token_head_contributions", "trace_pool"]
