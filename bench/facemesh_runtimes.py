"""FaceMesh on LiteRT against MediaPipe's own graph: the same landmarks? And the CPU per frame of each.

    python bench/facemesh_runtimes.py VIDEO [VIDEO ...] [--frames 150] [--window 50]

Each video is decoded as the scorer decodes it (analysis size, 25 fps); its first --frames frames are
cut into windows of --window frames with the tracking reset per window (what `eval score` does), and
both runtimes track them (train.landmarks.face_landmarks with AVBENCH_FACEMESH=mediapipe, then
litert). Per video: frames with a face for each runtime; over the windows where both found the face
in every frame (elsewhere face_landmarks interpolates), the largest difference among the 468 points
per frame (pixels): its median and maximum over frames; the CPU milliseconds per frame of each. Without videos it uses the embedded demo corpus.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def track(frames: np.ndarray, runtime: str, window: int) -> tuple[list[tuple], float]:
    """[(landmarks in pixels or None, frames with a face, frames)] per window, and the CPU s, with `runtime`."""
    from bench.bench_score import facemesh_runtime
    from train.landmarks import face_landmarks

    with facemesh_runtime(runtime):
        face_landmarks(frames[:2])  # start-up (model load) is not per frame
        out = []
        cpu = time.process_time()
        for s in range(0, len(frames), window):
            pts, info = face_landmarks(frames[s:s + window])
            out.append((pts, info["detected"], info["sampled"]))
        return out, time.process_time() - cpu


def compare(video: str, n_frames: int, window: int) -> dict:
    from perturb.media import FrameStream, probe
    from train.preprocess import _analysis_size

    w, h = _analysis_size(probe(video))
    frames = np.empty((n_frames, h, w, 3), np.uint8)
    with FrameStream(video, w, h, 25) as stream:
        frames = frames[:stream.read_into(frames)]
    graph, graph_cpu = track(frames, "mediapipe", window)
    lite, lite_cpu = track(frames, "litert", window)
    # frames of windows where both found the face in every frame (elsewhere landmarks are interpolated)
    diff = np.concatenate([np.abs(a[0] - b[0]).max(axis=(1, 2)) for a, b in zip(lite, graph)
                           if a[1] == a[2] and b[1] == b[2]] or [np.array([])])
    return {"video": Path(video).name, "frames": len(frames), "compared": len(diff),
            "found": (sum(w[1] for w in graph), sum(w[1] for w in lite)),
            "median_px": float(np.median(diff)) if len(diff) else float("nan"),
            "max_px": float(diff.max()) if len(diff) else float("nan"),
            "graph_ms": graph_cpu / len(frames) * 1e3, "litert_ms": lite_cpu / len(frames) * 1e3}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("videos", nargs="*")
    ap.add_argument("--frames", type=int, default=150)
    ap.add_argument("--window", type=int, default=50, help="frames per window (tracking reset per window)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="avbench_facemesh_") as tmp:
        videos = args.videos
        if not videos:
            from perturb.demo_corpus import make_demo_corpus

            videos = [str(p) for p in make_demo_corpus(Path(tmp), n_sources=4, progress=False)]
        rows = [compare(v, args.frames, args.window) for v in videos]
    print("| video | frames | with a face: graph / LiteRT | compared | median px | max px "
          "| CPU ms/frame: graph / LiteRT |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        g, lt = r["found"]
        print(f"| {r['video'][:48]} | {r['frames']} | {g} / {lt} | {r['compared']} | {r['median_px']:.3f} "
              f"| {r['max_px']:.3f} | {r['graph_ms']:.2f} / {r['litert_ms']:.2f} |")
    med = np.array([r["median_px"] for r in rows])
    mx = np.array([r["max_px"] for r in rows])
    print(f"\n{len(rows)} videos: per-video median {np.nanmin(med):.3f}-{np.nanmax(med):.3f} px; "
          f"max under 1 px in {int((mx < 1).sum())} of {len(rows)}; CPU ms/frame graph "
          f"{np.mean([r['graph_ms'] for r in rows]):.2f}, LiteRT {np.mean([r['litert_ms'] for r in rows]):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
