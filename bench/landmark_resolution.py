"""Does decoding resolution change the landmark signal the lip_sync judge reads?

    python bench/landmark_resolution.py VIDEO [--seconds 8] [--sides 512 1024 0]

Decodes the first `--seconds` of VIDEO with its longest side at each of `--sides` (0 = the source
size), runs FaceMesh (train.landmarks) on every frame, and prints per size: the eye-corner distance
in pixels, the std of the mouth opening (inner-lip gap / eye distance) and the correlation of that
mouth-opening signal with the one at the first size.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from perturb.media import canonical_size, probe, stream_frames  # noqa: E402
from train.landmarks import EYE_CORNERS, face_landmarks  # noqa: E402

UPPER_LIP, LOWER_LIP = 13, 14  # FaceMesh's inner-lip midpoints (in train.landmarks.LIPS_INNER)


def mouth_opening(video: str, side: int, seconds: float) -> tuple[np.ndarray, float]:
    """Inner-lip gap / eye-corner distance per frame, and the mean eye distance in pixels."""
    info = probe(video)
    w, h = canonical_size(info.width, info.height, side or max(info.width, info.height))
    frames = np.stack(list(stream_frames(video, w, h, 25, start=0, duration=seconds)))
    lm, _ = face_landmarks(frames)
    if lm is None:
        raise SystemExit(f"no face found at {w}x{h}")
    eye = np.linalg.norm(lm[:, EYE_CORNERS[0]] - lm[:, EYE_CORNERS[1]], axis=1)  # face_landmarks gives pixels
    gap = np.linalg.norm(lm[:, UPPER_LIP] - lm[:, LOWER_LIP], axis=1)
    return gap / eye, float(eye.mean())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("video")
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--sides", type=int, nargs="+", default=[512, 1024, 0])
    args = ap.parse_args()
    reference = None
    print("| longest side | eye distance px | mouth opening std | corr with the first |\n|---|---|---|---|")
    for side in args.sides:
        opening, eye_px = mouth_opening(args.video, side, args.seconds)
        reference = opening if reference is None else reference
        n = min(len(opening), len(reference))
        corr = np.corrcoef(opening[:n], reference[:n])[0, 1]
        print(f"| {side or 'source'} | {eye_px:.1f} | {opening.std():.4f} | {corr:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
