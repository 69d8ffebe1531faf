"""The ``segclip`` command line: flags and YAML -> typed configs -> library ``run_*`` -> files and stdout.

Nothing here computes anything: every command is a config dataclass and a library function (the table in
:mod:`segclip.cli.commands`); this layer builds the flags from the config's fields, merges ``--config`` YAML,
loads the model, calls the function and writes its result. User errors
(:class:`segclip.errors.SegclipError`) print one clear message, never a traceback.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys

from collections.abc import Callable
from typing import Any

from segclip.cli.fast_help import help_parser, wants_help
from segclip.errors import SegclipError

log = logging.getLogger("segclip")


def load_model_for(config: Any, devices: int = 1) -> Any:
    """Load the model of the model options (:class:`~segclip.models.loading.ModelConfig`); one GPU per process under
    multi-GPU DDP."""
    from segclip.models.loading import ModelConfig

    if devices > 1 and config.resolve_device().type == "cuda":
        config = ModelConfig(config.model, config.pretrained, f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}",
                             config.precision)
    return config.load()


def _common(parser: argparse.ArgumentParser, command: Any) -> None:
    from segclip.cli.options import add_config_arguments
    from segclip.models.loading import ModelConfig

    if command.needs_model:
        add_config_arguments(parser, ModelConfig, "model and device")
    add_config_arguments(parser, command.config, "options")
    group = parser.add_argument_group("run")
    group.add_argument("--config", dest="config_file", default=None, metavar="YAML",
                       help="YAML file of option values (keys are option names with '_' or '-'); options given on "
                            "the command line win.")
    group.add_argument("-v", "--verbose", action="store_true", help="log progress details.")
    if "json" not in {f.name for f in dataclasses.fields(command.config)}:  # prepare pascal_context: a file
        group.add_argument("--json", dest="as_json", action="store_true",
                           help="print the result as JSON on stdout (a machine-readable summary) instead of text.")


def build_parser(make: Callable[..., Any] = argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The real parser: every command's flags from its config dataclass (imports every command: seconds)."""
    from segclip.cli.commands import COMMANDS

    parser = make(
        prog="segclip",
        description="Interpret CLIP-ResNet through its neuron-head pairs, and segment images with them, "
                    "training-free. Run 'segclip COMMAND --help' for each command's options.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    groups: dict[str, Any] = {}
    for command in COMMANDS:
        target = subparsers
        if command.group:
            if command.group not in groups:
                grouped = subparsers.add_parser(command.group, help=command.group_help)
                groups[command.group] = grouped.add_subparsers(dest="subcommand", metavar=command.group_metavar,
                                                                required=True)
            target = groups[command.group]
        sub = target.add_parser(command.name, help=command.help, description=command.description)
        _common(sub, command)
        sub.set_defaults(command_spec=command)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``segclip`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if wants_help(argv):  # instant: no torch, Lightning or open_clip
        parser = help_parser()
        parser.parse_args(argv or ["--help"])
        return 2
    from segclip.cli.commands import emit, finished_analysis
    from segclip.cli.options import read_yaml, split_values
    from segclip.config import build_config, progress_bars
    from segclip.models.loading import ModelConfig
    from segclip.runtime import keep_freed_memory

    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if args.command is None:
        parser.print_help()
        return 2
    keep_freed_memory()  # CPU passes: no page faults for every large activation (segclip.runtime)
    command = args.command_spec
    label = " ".join(filter(None, [args.command, getattr(args, "subcommand", None)]))
    try:
        given = {k: v for k, v in vars(args).items()
                 if k not in ("command", "subcommand", "command_spec", "config_file", "verbose", "as_json")}
        classes = [ModelConfig, command.config] if command.needs_model else [command.config]
        from_yaml = ({} if args.config_file is None else read_yaml(args.config_file))
        yaml_parts = split_values(from_yaml, classes, f"Config file {args.config_file}")
        flag_parts = split_values(given, classes, "The command line")
        values = [{**y, **f} for y, f in zip(yaml_parts, flag_parts)]
        source = "the command line" + (f" and {args.config_file}" if args.config_file else "")
        config = build_config(command.config, values[-1], source=source)
        loader, model_config = None, None
        if command.needs_model:
            model_config = build_config(ModelConfig, values[0], source=source)
            devices = getattr(config, "devices", 1)
            loader = lambda: load_model_for(model_config, devices)  # noqa: E731  (loaded once inputs are checked)
        stored = finished_analysis(config, model_config if command.needs_model else None, command.result_file)
        if stored is not None:
            return emit(stored, config, getattr(args, "as_json", False))
        from segclip.viz.plots import figure_options  # matplotlib only once a command runs

        with progress_bars(getattr(config, "progress", True)), \
                figure_options(getattr(config, "figure_format", "png"), getattr(config, "dpi", None)):
            return emit(command.run(config, loader, args.verbose), config, getattr(args, "as_json", False))
    except SegclipError as err:
        print(f"segclip {label}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"segclip {label}: interrupted; run the same command again to resume.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
