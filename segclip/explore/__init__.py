"""A static, offline explorer of neuron-head pairs (``segclip explore``): see :mod:`segclip.explore.site`."""
from segclip.explore.site import ExploreConfig, ExploreResult, run_explore

__all__ = ["ExploreConfig", "ExploreResult", "run_explore"]
