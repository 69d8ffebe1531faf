"""How long `segclip --help` and `segclip COMMAND --help` take, against building the real parser (which imports
every command's module, and with them torch, Lightning and open_clip), each in a fresh interpreter.

Help is served from ``segclip/cli/help.json`` (:mod:`segclip.cli.fast_help`); the real parser is what a command that
runs builds. Rounds alternate the two and the table reports each one's fastest and median wall time.

    python benchmarks/cli_help.py   # last line: help_seconds: <s> (goal: < 1), ratio to the real parser
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

CASES = {
    "segclip --help": "from segclip.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n",
    "segclip eval --help": "from segclip.cli import main\ntry:\n    main(['eval', '--help'])\nexcept SystemExit:\n"
                           "    pass\n",
    "real parser (any command that runs)": "from segclip.cli import build_parser\nbuild_parser()\n",
}


def timed(code: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name in CASES}
    for _ in range(args.rounds):
        for name, code in CASES.items():
            times[name].append(timed(code))
    print("| what | fastest (s) | median (s) |\n|---|---|---|")
    for name, values in times.items():
        print(f"| {name} | {min(values):.3f} | {statistics.median(values):.3f} |")
    worst_help = max(statistics.median(times["segclip --help"]), statistics.median(times["segclip eval --help"]))
    real = statistics.median(times["real parser (any command that runs)"])
    print(f"real parser / help: {real / worst_help:.1f}x")
    print(f"help_seconds: {worst_help:.3f} (goal: < 1)")


if __name__ == "__main__":
    main()
