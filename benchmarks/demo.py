"""``segclip demo`` latency on this machine: the start (``segclip demo`` spawned -> its page answers) and the click
(a pixel's attribution with its unit maps, server side), next to a baseline measured in the same run: the start of
``python -c "import torch"`` (the floor of any segclip command) and one segmentation of the same image.

Usage: ``python benchmarks/demo.py [--rounds 3] [--method neuron-head]``. Needs ``segclip[demo]``.
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
import urllib.request


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def time_start(command: list[str], url: str | None) -> float:
    """Seconds from spawning ``command`` to its exit (``url`` None) or to ``url`` answering 200."""
    begun = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        if url is None:
            process.wait()
            return time.perf_counter() - begun
        while True:
            try:
                with urllib.request.urlopen(url, timeout=1) as response:
                    if response.status == 200:
                        return time.perf_counter() - begun
            except OSError:
                if process.poll() is not None:
                    raise RuntimeError("segclip demo exited before serving") from None
                time.sleep(0.1)
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--method", default="neuron-head")
    args = parser.parse_args()
    from segclip.data.images import read_image
    from segclip.explain.demo import DemoApp
    from segclip.models import load_model
    from segclip.paths import example_image_path

    starts, floors = [], []
    for _ in range(args.rounds):
        port = free_port()
        floors.append(time_start([sys.executable, "-c", "import torch"], None))
        starts.append(time_start([sys.executable, "-m", "segclip.cli", "demo", "--port", str(port)],
                                 f"http://127.0.0.1:{port}/"))
    app = DemoApp(load_model())
    image = read_image(example_image_path())
    names = ", ".join(app.default.info.classes)
    segments, clicks = [], []
    for _ in range(args.rounds):
        begun = time.perf_counter()
        state, *_ = app.segment(image, names, "", "", args.method)
        segments.append(time.perf_counter() - begun)
        begun = time.perf_counter()
        app.click(state, image.shape[1] // 3, image.shape[0] // 2)
        clicks.append(time.perf_counter() - begun)
    load = os.getloadavg()[0]
    print(f"cores: {os.cpu_count()}, load average (1 min) at the end: {load:.1f}; best of {args.rounds} rounds")
    print(f"{'what':<34} {'seconds':>8}")
    for what, values in [("python -c 'import torch'", floors), ("segclip demo start -> page served", starts),
                         (f"segment the example ({args.method})", segments), ("click -> attribution + maps", clicks)]:
        print(f"{what:<34} {min(values):>8.2f}")
    print(f"demo_start_vs_import_torch: {min(starts) / min(floors):.2f}")
    print(f"click_vs_segment: {min(clicks) / min(segments):.2f}")
    print(f"demo_start: {min(starts):.1f} s (goal: < 15 s); click: {min(clicks):.2f} s (goal: < 2 s)")


if __name__ == "__main__":
    main()
