"""Batch throughput of a judge alone (no decoding, no face tracking): windows/s and x real time per batch size.

    python bench/judge_throughput.py --judge RUN/model|EXPORT [--device cuda] [--batch-sizes 1 8 64 256] [--seconds 5]

Inputs are random tensors of the shapes the judge's preprocessing gives (train.preprocess), so it
runs where ffmpeg and MediaPipe are absent (the GPU check, bench/gpu_check.sh). What `eval score`
pays on top is the decoding and the face landmarks of bench/bench_score.py, done on CPU cores.
Prints a markdown table and the device in words.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--judge", required=True, help="a run's model/ folder or an export folder")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 64, 256])
    ap.add_argument("--seconds", type=float, default=5.0, help="timed seconds per batch size")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (default 1, as each `eval score` worker process uses)")
    args = ap.parse_args(argv)

    import torch

    from train.device import describe_device
    from train.model import load_judge

    torch.set_num_threads(args.threads)
    model, cfg = load_judge(Path(args.judge), args.device)
    model.eval()
    video_shape, audio_shape = cfg.input_shapes()
    print(f"judge {args.judge} on {describe_device(args.device)}, {args.threads} torch thread(s); "
          f"window {cfg.window_seconds:g} s: video {video_shape}, audio {audio_shape}\n")
    print("| batch size | windows/s | x real time (judge only) | ms per batch |")
    print("|---|---|---|---|")
    for bs in args.batch_sizes:
        video = torch.randn(bs, *video_shape, device=args.device)
        audio = torch.randn(bs, *audio_shape, device=args.device)
        with torch.no_grad():
            model(video=video, audio=audio)  # warm-up: kernels chosen, memory allocated
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < args.seconds:
                model(video=video, audio=audio)
                n += 1
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            wall = time.perf_counter() - t0
        rate = n * bs / wall
        print(f"| {bs} | {rate:.0f} | {rate * cfg.window_seconds:.0f} | {1000 * wall / n:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
