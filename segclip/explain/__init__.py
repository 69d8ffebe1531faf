"""Why is this pixel a cat: exact attribution of a segmentation to the method's units, and interventions."""
from segclip.explain.attribution import Attribution, ImageExplainer, Unit, UnitScore, unit_window_maps
from segclip.explain.intervention import Comparison, UnitIntervention, intervened_method

__all__ = ["Attribution", "Comparison", "ImageExplainer", "Unit", "UnitIntervention", "UnitScore",
           "intervened_method", "unit_window_maps"]
