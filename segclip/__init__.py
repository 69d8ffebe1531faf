"""segclip: neuron-head pairs of CLIP-ResNet, for interpretation and training-free segmentation.

The main names are available here, imported on first use (``import segclip`` itself imports neither torch nor
open_clip)::

    import segclip
    model = segclip.load_model()                          # the bundled tiny model
    seg = segclip.segment(model, segclip.example_image_path(), ["sand", "water", "star", "ring"])
    seg.labels, seg.overlay(), seg.heatmap("star"), seg.save("out")

Every command is a config and a ``run_*`` function here too (``segclip.run_compare(segclip.CompareConfig(...))``).
"""
from __future__ import annotations

import importlib
from typing import Any

# name -> the module that defines it (imported lazily by __getattr__)
_EXPORTS = {
    "load_model": "segclip.models.loading",
    "CLIPResNet": "segclip.models.loading",
    "ModelConfig": "segclip.models.loading",
    "SegmentedImage": "segclip.segment.api",
    "encode_classes": "segclip.models.text",
    "read_image": "segclip.data.images",
    "example_image_path": "segclip.paths",
    "Trace": "segclip.core.trace",
    "RegisterIntervention": "segclip.core",
    "SegclipError": "segclip.errors",
    "SYNTHETIC_CLASSES": "segclip.data.synthetic",
    "class_colours": "segclip.viz.palette",
    "read_label_png": "segclip.viz.palette",
    **{name: "segclip.segment.run" for name in ("run_eval", "EvalConfig", "run_compare", "CompareConfig")},
    **{name: "segclip.segment.predict" for name in ("run_segment", "SegmentConfig")},
    **{name: "segclip.segment.benchmark" for name in ("run_benchmark", "BenchmarkConfig")},
    **{name: "segclip.analysis.calibration" for name in ("run_calibrate", "CalibrateConfig")},
    **{name: "segclip.analysis.reconstruct" for name in ("run_reconstruct", "ReconstructConfig", "run_ablate",
                                                         "AblateConfig")},
    **{name: "segclip.analysis.label" for name in ("run_label", "LabelConfig")},
    **{name: "segclip.analysis.top_images" for name in ("run_top_images", "TopImagesConfig")},
    **{name: "segclip.analysis.shift" for name in ("run_shift", "ShiftConfig")},
    **{name: "segclip.analysis.sink" for name in ("run_sink", "SinkConfig")},
    **{name: "segclip.analysis.subconcepts" for name in ("run_subconcepts", "SubconceptsConfig")},
    **{name: "segclip.analysis.decompose" for name in ("run_decompose", "DecomposeConfig")},
    **{name: "segclip.explore.site" for name in ("run_explore", "ExploreConfig")},
    **{name: "segclip.data.demo" for name in ("run_demo_data", "DemoDataConfig")},
}

__all__ = sorted([*_EXPORTS, "segment"])


def __getattr__(name: str) -> Any:
    if name == "segment":  # the subpackage, callable as segclip.segment.api.segment (see its docstring)
        return importlib.import_module("segclip.segment")
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'segclip' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
