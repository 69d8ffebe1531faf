"""The command-line framework and ``segclip decompose``; the README's commands (slow, run by CI)."""
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from segclip.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"


def test_decompose_bundled_example(capsys):
    assert main(["decompose", "--texts", "ring,star", "--top", "2"]) == 0
    out = capsys.readouterr().out
    error = float(re.search(r"sum of pairs \+ biases - encode_image\| = ([0-9.e+-]+)", out).group(1))
    scale = float(re.search(r"max \|embedding\| ([0-9.e+-]+)", out).group(1))
    assert error < 1e-5 * scale  # float32 round-off
    assert out.count("(neuron, head)") == 2 and "'star'" in out


def test_bad_options_are_one_line_errors(capsys, tmp_path):
    assert main(["decompose", "--top", "0"]) == 2
    assert "--top must be at least 1" in capsys.readouterr().err
    assert main(["decompose", str(tmp_path / "missing.jpg")]) == 2
    err = capsys.readouterr().err
    assert "missing.jpg" in err and "Traceback" not in err
    assert main(["decompose", "--model", "ViT-B-32", "--pretrained", "none"]) == 2
    assert "not a CLIP-ResNet" in capsys.readouterr().err


def test_config_file(capsys, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("top: 1\nwords: sky\n")
    assert main(["decompose", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "'sky'" in out and out.count("    (") == 1
    assert main(["decompose", "--config", str(config), "--texts", "sand"]) == 0  # the command line wins
    assert "'sand'" in capsys.readouterr().out
    config.write_text("topp: 1\n")
    assert main(["decompose", "--config", str(config)]) == 2
    assert "unknown options ['topp']" in capsys.readouterr().err
    config.write_text("top: [1\n")
    assert main(["decompose", "--config", str(config)]) == 2
    assert "not valid YAML" in capsys.readouterr().err


def readme_commands() -> list[str]:
    """The ``segclip ...`` commands of the README's quick start, exactly as written."""
    text = README.read_text(encoding="utf-8")
    text = text[text.index("## Quick start"):text.index("\n## ", text.index("## Quick start") + 3)]
    commands = []  # the analysis and explorer sections run in order in tests/test_readme_sections.py
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            for part in line.split("&&"):
                part = part.strip()
                if part.startswith("segclip ") and "/data/" not in part and "/weights/" not in part:
                    commands.append(part)
    return commands


def test_readme_names_its_commands():
    assert "segclip compare --dataset synthetic" in readme_commands()


@pytest.mark.slow
@pytest.mark.parametrize("command", readme_commands())
def test_readme_command_runs_as_written(command, tmp_path):
    """Each runnable README command, in a subprocess, exactly as a new user types it."""
    args = shlex.split(command)
    result = subprocess.run([sys.executable, "-m", "segclip.cli", *args[1:]], cwd=tmp_path, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "neuron-head" in result.stdout and "maskclip" in result.stdout


def test_help_is_instant_and_equals_the_real_parser(capsys):
    """`segclip --help` and `segclip COMMAND --help` come from segclip/cli/help.json without importing torch; the
    file must equal a fresh recording of the real parser (regenerate: python -m segclip.cli.fast_help)."""
    import json
    import subprocess
    import sys
    from importlib import resources

    from segclip.cli.fast_help import HELP_FILE, record

    shipped = json.loads(resources.files("segclip.cli").joinpath(HELP_FILE).read_text(encoding="utf-8"))
    assert shipped == json.loads(json.dumps(record())), "stale help.json: run python -m segclip.cli.fast_help"
    probe = ("import sys; from segclip.cli import main\n"
             "try:\n    main(['eval', '--help'])\nexcept SystemExit:\n    pass\n"
             "print('torch' in sys.modules, 'lightning' in sys.modules, 'open_clip' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.stdout.splitlines()[-1] == "False False False", done.stderr[-2000:]
    assert "--zero-registers" in done.stdout and "--protocol" in done.stdout


def test_deprecated_flag_names_still_work_and_warn(capsys):
    from segclip.cli import build_parser

    args = build_parser().parse_args(["compare", "--registers", "4", "--class-names", "text"])
    assert args.zero_registers == "4" and args.class_set == "text"
    err = capsys.readouterr().err
    assert "--registers is deprecated; use --zero-registers" in err and "use --class-set" in err
