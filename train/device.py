"""What a run or a scoring job ran on, in words (metrics.json, `eval score`'s header)."""
from __future__ import annotations

import os
from pathlib import Path


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def describe_device(device: object) -> str:
    """"NVIDIA H100 80GB HBM3 (cuda:0)" for a GPU; the CPU model and the cores this process may use
    for a CPU. Never fails: "unknown" parts are said so."""
    name = str(device)
    if name.startswith("cuda"):
        try:
            import torch

            index = int(name.split(":")[1]) if ":" in name else torch.cuda.current_device()
            return f"{torch.cuda.get_device_name(index)} (cuda:{index})"
        except Exception:  # no driver, no such index
            return f"{name} (GPU name unknown)"
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {usable_cores()} cores (cpu)"
