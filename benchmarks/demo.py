"""``segclip demo`` latency on this machine: the start (``segclip demo`` spawned -> its page answers) and the click
(a pixel's attribution with its unit maps, server side), next to a baseline measured in the same run: the start of
``python -c "import torch"`` (the floor of any segclip command) and one segmentation of the same image. CPU
seconds (user + system, Linux) are printed next to the wall times: on a machine shared with other work the wall
time is the CPU time plus waiting.

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


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a running process so far (Linux ``/proc``; NaN elsewhere)."""
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def time_start(command: list[str], url: str | None) -> tuple[float, float]:
    """Wall and CPU seconds from spawning ``command`` to its exit (``url`` None) or to ``url`` answering 200."""
    begun = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        if url is None:
            _, _, usage = os.wait4(process.pid, 0)
            process.returncode = 0
            return time.perf_counter() - begun, usage.ru_utime + usage.ru_stime
        while True:
            try:
                with urllib.request.urlopen(url, timeout=1) as response:
                    if response.status == 200:
                        return time.perf_counter() - begun, cpu_seconds(process.pid)
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
    print(f"{'what':<34} {'seconds':>8} {'CPU s':>6}")
    for what, values in [("python -c 'import torch'", floors), ("segclip demo start -> page served", starts)]:
        wall, cpu = min(values)
        print(f"{what:<34} {wall:>8.2f} {cpu:>6.2f}")
    for what, values in [(f"segment the example ({args.method})", segments), ("click -> attribution + maps", clicks)]:
        print(f"{what:<34} {min(values):>8.2f}")
    print(f"demo_start_vs_import_torch: {min(starts)[0] / min(floors)[0]:.2f} (CPU: "
          f"{min(starts)[1] / min(floors)[1]:.2f})")
    print(f"click_vs_segment: {min(clicks) / min(segments):.2f}")
    print(f"demo_start: {min(starts)[0]:.1f} s wall, {min(starts)[1]:.1f} s CPU (goal: < 15 s); click: "
          f"{min(clicks):.2f} s (goal: < 2 s)")


if __name__ == "__main__":
    main()
