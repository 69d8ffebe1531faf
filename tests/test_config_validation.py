"""Issue 21 item 7: every config is validated by field type at construction, from Python and YAML alike.

The expected verdicts are transcribed independently here (a table of field kind -> accepted and refused values);
each refusal must be a one-line ConfigError naming the field.
"""
import dataclasses
import math
from pathlib import Path

import pytest

from segclip.analysis.calibration import CalibrateConfig
from segclip.analysis.distributed import ProcessConfig
from segclip.cli.commands import COMMANDS
from segclip.config import Config, build_config, check_value, option
from segclip.errors import ConfigError
from segclip.explore.site import ExploreConfig
from segclip.models.loading import ModelConfig
from segclip.segment.predict import SegmentConfig
from segclip.segment.run import CompareConfig, EvalConfig


def segment(**values):
    return SegmentConfig(images=(Path("a.png"),), out=Path("out"), **values)


def test_a_string_for_a_tuple_is_split_on_commas_not_into_letters():
    assert segment(classes="sky,ring").classes == ("sky", "ring")  # was 8 one-letter classes
    assert segment(classes="sky").classes == ("sky",)
    assert segment(classes=" sky , ring ").classes == ("sky", "ring")
    assert segment(classes=["sky", "ring"]).classes == ("sky", "ring")  # a list is stored as a tuple
    assert CompareConfig(methods="maskclip,neuron-head").methods == ("maskclip", "neuron-head")
    assert SegmentConfig(images="my,file.png", out="o").images == (Path("my,file.png"),)  # one path, not split
    for bad, why in (("sky,,ring", "blank entry"), ("sky,", "blank entry"), ("", "blank entry"),
                     (("sky", None), "needs a value"), (("sky", 3), "must be a string"),
                     ({"sky"}, "must be a list or a comma-separated string"), (b"sky", "must be a list")):
        with pytest.raises(ConfigError, match=rf"^'classes' \(--classes\).*{why}"):
            segment(classes=bad)


def test_none_as_a_name_or_a_required_value_is_refused():
    with pytest.raises(ConfigError, match=r"'classes' \(--classes\) entries: needs a value, got None"):
        segment(classes=(None,))
    with pytest.raises(ConfigError, match=r"'method' \(--method\) needs a value, got None"):
        segment(method=None)
    with pytest.raises(ConfigError, match=r"'out' \(--out\) needs a value"):
        SegmentConfig(images=(Path("a.png"),), out=None)
    assert segment(classes=None).classes is None  # optional: None is "not given"


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, float("nan")])
def test_nan_and_infinite_floats_are_refused(value):
    with pytest.raises(ConfigError, match=r"'checkpoint_every' \(--checkpoint-every\) must be a finite number"):
        ProcessConfig(checkpoint_every=value)
    with pytest.raises(ConfigError, match=r"'keep_pairs' \(--keep-pairs\) must be a finite number"):
        ExploreConfig(statistics=Path("s"), images=Path("i"), out=Path("o"), keep_pairs=value)
    with pytest.raises(ConfigError, match=r"'background_threshold'.*finite"):
        segment(background_threshold=value)


@pytest.mark.parametrize("value", ["8", 8.0, 8.5, True, None, [8]])
def test_a_batch_size_that_is_not_an_integer_is_refused_naming_the_field(value):
    for make in (lambda v: segment(batch_size=v), lambda v: EvalConfig(batch_size=v),
                 lambda v: CalibrateConfig(images=Path("x"), batch_size=v)):
        with pytest.raises(ConfigError, match=r"^'batch_size' \(--batch-size\) (must be an integer|needs a value)"):
            make(value)


def test_other_types_and_choices():
    assert ProcessConfig(checkpoint_every=3).checkpoint_every == 3.0 and \
        isinstance(ProcessConfig(checkpoint_every=3).checkpoint_every, float)
    assert segment(calibration="c.safetensors").calibration == Path("c.safetensors")  # str -> Path
    for make, match in ((lambda: segment(heatmaps="yes"), r"'heatmaps' .* must be True or False"),
                        (lambda: segment(heatmaps=1), r"'heatmaps' .* must be True or False"),
                        (lambda: segment(method="nope"), r"'method' .* must be one of .*neuron-head.*got 'nope'"),
                        (lambda: segment(calibration=3), r"'calibration' .* must be a path, got 3 \(int\)"),
                        (lambda: segment(calibration=""), r"'calibration' .* must be a path"),
                        (lambda: ModelConfig(precision="fp64"), r"'precision' .* must be one of fp32, bf16, fp16"),
                        (lambda: ProcessConfig(checkpoint_every="5"), r"'checkpoint_every' .* must be a number"),
                        (lambda: ProcessConfig(devices=2.0), r"'devices' .* must be an integer")):
        with pytest.raises(ConfigError, match=match):
            make()


def test_yaml_values_meet_the_same_checks():
    """build_config converts YAML/flag strings; what remains (NaN, None entries, empty entries) is refused."""
    base = {"images": ["a.png"], "out": "o"}
    assert build_config(SegmentConfig, {**base, "classes": "sky,ring"}).classes == ("sky", "ring")
    assert build_config(SegmentConfig, {**base, "batch_size": "4"}).batch_size == 4
    for key, value, match in (("checkpoint_every", float("nan"), "finite"), ("checkpoint_every", "inf", "finite"),
                              ("checkpoint_every", "nan", "finite")):
        with pytest.raises(ConfigError, match=match):
            build_config(CalibrateConfig, {"images": "x", key: value})
    with pytest.raises(ConfigError, match="blank entry"):
        build_config(SegmentConfig, {**base, "classes": "sky,,ring"})
    with pytest.raises(ConfigError, match="needs a value"):
        build_config(SegmentConfig, {**base, "classes": ["sky", None]})
    with pytest.raises(ConfigError, match=r"'batch_size' \(--batch-size\) must be an integer, got 4.5"):
        build_config(SegmentConfig, {**base, "batch_size": 4.5})
    with pytest.raises(ConfigError, match=r"'classes' \(--classes\) must be a list or a comma-separated string"):
        build_config(SegmentConfig, {**base, "classes": {"a": 1}})  # not the mapping's keys


def test_every_command_config_is_validated():
    """Each command's config (and the model options) derives from Config; a wrong type in any int field is refused
    at construction, named."""
    required = {Path: Path("x"), tuple[Path, ...]: (Path("x.png"),), tuple[str, ...]: ("a",)}
    from segclip.config import field_types

    for config in {c.config for c in COMMANDS} | {ModelConfig}:
        assert issubclass(config, Config), config.__name__
        hints = field_types(config)
        ints = [f.name for f in dataclasses.fields(config) if hints[f.name] is int]
        if not ints:
            continue
        name = ints[0]
        kwargs = {f.name: required[hints[f.name]] for f in dataclasses.fields(config)
                  if f.default is dataclasses.MISSING and hints[f.name] in required}
        with pytest.raises(ConfigError, match=rf"^'{name}' \(--{name.replace('_', '-')}\) must be an integer"):
            config(**kwargs, **{name: "3"})


def test_check_value_table():
    """An independent table of verdicts for the generic checker."""
    ok = [(int, 3, 3), (int | None, None, None), (float, 2, 2.0), (float, 0.5, 0.5), (str, "a", "a"),
          (bool, False, False), (Path, "p", Path("p")), (tuple[int, ...], "1,2", (1, 2)),
          (tuple[float, ...], [0.5, 1], (0.5, 1.0)), (tuple[str, ...] | None, None, None)]
    for hint, value, expected in ok:
        got = check_value("f", hint, value)
        assert got == expected and type(got) is type(expected), (hint, value, got)
    bad = [(int, "3"), (int, 3.0), (int, True), (int, None), (float, "0.5"), (float, math.nan), (float, True),
           (str, 3), (str, None), (bool, "true"), (bool, 0), (Path, 3), (Path, " "), (tuple[int, ...], "1,x"),
           (tuple[int, ...], 5), (tuple[str, ...], "a,,b")]
    for hint, value in bad:
        with pytest.raises(ConfigError, match=r"^'f' \(--f\)"):
            check_value("f", hint, value)


def test_a_config_of_its_own_gets_the_checks():
    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Mine(Config):
        names: tuple[str, ...] = option(("a",), help="names")
        size: int = option(1, help="a size")

        def __post_init__(self):
            super().__post_init__()
            if self.size < 1:  # a range check that would fail with a TypeError on a string
                raise ConfigError("--size must be at least 1")

    assert Mine(names="x,y").names == ("x", "y")
    with pytest.raises(ConfigError, match="'size' .* must be an integer, got '2'"):
        Mine(size="2")
