"""The exact neuron-head / token-head decomposition, pair directions and text similarity."""
from segclip.decompose.pairs import PairDirections
from segclip.decompose.trace import HOOK_POINTS, Trace, token_head_contributions, trace_pool

__all__ = ["HOOK_POINTS", "PairDirections", "Trace", "token_head_contributions", "trace_pool"]
