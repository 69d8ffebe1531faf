"""The ``segclip`` command line.

Subcommands live next to the code they drive; each module in ``COMMAND_MODULES`` exposes
``register(subparsers, common)`` which adds its subcommands (``common`` is the parent parser holding the model
options) and sets ``func`` (a callable taking the parsed ``argparse.Namespace``, returning an exit code).
User errors (:class:`segclip.errors.SegclipError`) print one clear message, never a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path

import torch
import yaml

from segclip.errors import ConfigError, SegclipError

COMMAND_MODULES = (
    "segclip.decompose.commands",
    "segclip.analysis.commands",
    "segclip.segment.commands",
)

log = logging.getLogger("segclip")


def common_parser() -> argparse.ArgumentParser:
    """Options every subcommand shares: the model, where it runs, and an optional YAML config."""
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("model and device")
    group.add_argument("--model", default=None,
                       help="CLIP-ResNet: segclip-tiny (bundled, the default), RN50, RN101, RN50x4, RN50x16, "
                            "RN50x64, or any of these with -quickgelu.")
    group.add_argument("--pretrained", default=None,
                       help="weights: an open_clip tag (e.g. openai), a local checkpoint (.pt OpenAI archive, "
                            "state dict .pt or .safetensors), or 'none' for random weights. Default: the bundled "
                            "weights for segclip-tiny, 'openai' otherwise.")
    group.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available).")
    group.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                       help="compute precision; bf16/fp16 need a GPU (default: fp32).")
    group.add_argument("--batch-size", type=int, default=8,
                       help="images (or sliding-window crops) per backbone pass (default: 8).")
    group.add_argument("--config", type=Path, default=None,
                       help="YAML file of option values (keys are option names with '_' or '-'); options given on "
                            "the command line win.")
    group.add_argument("-v", "--verbose", action="store_true", help="log progress details.")
    return common


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; a CUDA device that is absent is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"Unknown device '{name}'; use cpu, cuda or cuda:N.") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name} was asked for but no CUDA GPU is available; use --device cpu.")
    return device


def load_from_args(args: argparse.Namespace):
    """Load the model named by the common options."""
    from segclip.models import load_model

    name = args.model or "segclip-tiny"
    return load_model(name, args.pretrained, device=resolve_device(args.device), precision=args.precision)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segclip",
        description="Interpret CLIP-ResNet through its neuron-head pairs, and segment images with them, "
                    "training-free. Run 'segclip COMMAND --help' for each command's options.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    common = common_parser()
    for module in COMMAND_MODULES:
        importlib.import_module(module).register(subparsers, common)
    return parser


def apply_config(parser: argparse.ArgumentParser, argv: list[str], args: argparse.Namespace) -> argparse.Namespace:
    """Re-parse with the YAML config's values as defaults, so that command-line options win."""
    path: Path = args.config
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as err:
        raise ConfigError(f"Cannot read config file {path}: {err.strerror}.") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"Config file {path} is not valid YAML: {err}.") from err
    if not isinstance(values, dict):
        raise ConfigError(f"Config file {path} must hold a mapping of option names to values.")
    values = {str(key).replace("-", "_"): value for key, value in values.items()}
    unknown = sorted(set(values) - set(vars(args)))
    if unknown:
        raise ConfigError(f"Config file {path} has unknown options {unknown} for 'segclip {args.command}'.")
    subparser = parser._subparsers._group_actions[0].choices[args.command]  # the chosen subcommand's parser
    subparser.set_defaults(**values)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``segclip`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if args.command is None:
        parser.print_help()
        return 2
    try:
        if getattr(args, "config", None) is not None:
            args = apply_config(parser, argv, args)
        return int(args.func(args) or 0)
    except SegclipError as err:
        print(f"segclip {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"segclip {args.command}: interrupted; run the same command again to resume.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
