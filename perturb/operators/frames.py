"""Picture defects on otherwise real frames (`frame_corruption`).

params: {"kind": str, "strength": float, "seed": int, ...kind extras}; what `strength` means depends
on the kind (STRENGTH_RANGES gives its range per severity level, 1 = mildest):

  blur       Gaussian blur, strength = sigma in pixels (cv2.GaussianBlur, kernel from sigma).
  noise      additive Gaussian noise, strength = std in 8-bit levels, per pixel/channel/frame,
             drawn from numpy's default_rng(seed), frame by frame.
  block      JPEG re-compression (cv2.imencode, 4:2:0), strength = JPEG quality (LOWER is worse);
             optional extra "downscale" (>= 1, default 1, not drawn by sample_params): shrink by
             that factor (INTER_AREA) before and blow up with nearest-neighbour after, for the
             coarse blockiness of very low bitrates.
  stutter    freezes: strength = fraction of frames replaced by a repeat of the frame before them,
             in runs of 1-4 frames placed by default_rng(seed). Frame count and timing are kept
             (a freeze followed by a jump = frames held then dropped).
  color      colour cast: per-channel gains 1 + strength * d, extra "direction" d = 3 numbers with
             zero mean and RMS 1 (drawn at sampling time), so brightness stays roughly put.
  occlusion  lower-face occluder: strength = fraction of the mouth box covered by a filled
             rectangle centred in it, extra "fill" = grey level (dark or mid grey). The mouth box is
             found in `apply` (deterministic): OpenCV's Haar frontal-face detector on the middle
             frame, largest face (x, y, w, h) -> box x+0.2w..x+0.8w, y+0.62h..y+0.98h. FALLBACK when
             no face is found: the lower-middle third of the frame (x in [W/3, 2W/3), y in [2H/3, H)).
             The box is static over the clip.

PSNR_BANDS[kind][severity] = (lo, hi) dB, original vs corrupted over all frames, is what the
severity levels of blur / noise / block / color were calibrated to on the natural-ish test fixture
(colour gradients + 1/f^1.5 texture + a stripe patch + a moving disc, 96x96, tests/fixtures_ops.py).
Higher severity gives lower PSNR and the bands do not overlap. On real talking-head clips (GRID,
HDTF, VoxCeleb2, LRS2 crops) mid-range strengths land within about 2 dB of the bands; noise is
content independent, JPEG gives 2-5 dB more on smooth faces at levels 1-3, colour casts less on
dark footage.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..clip import Clip
from .base import SEVERITY_LEVELS, Operator, check_keys, check_list, check_severity, register

KINDS = ("blur", "noise", "block", "stutter", "color", "occlusion")

STRENGTH_RANGES: dict[str, dict[int, tuple[float, float]]] = {
    "blur": {1: (0.5, 0.7), 2: (0.85, 1.2), 3: (1.5, 2.4), 4: (3.0, 5.0), 5: (7.0, 12.0)},
    "noise": {1: (2.0, 3.6), 2: (4.2, 5.8), 3: (6.3, 8.7), 4: (9.5, 13.0), 5: (15.0, 30.0)},
    # JPEG quality: decreasing with severity (integers)
    "block": {1: (88, 95), 2: (45, 75), 3: (17, 30), 4: (7, 11), 5: (3, 5)},
    "stutter": {1: (0.04, 0.08), 2: (0.10, 0.15), 3: (0.18, 0.25), 4: (0.28, 0.38), 5: (0.42, 0.55)},
    "color": {1: (0.015, 0.028), 2: (0.034, 0.043), 3: (0.052, 0.065), 4: (0.075, 0.095),
              5: (0.12, 0.25)},
    "occlusion": {1: (0.15, 0.25), 2: (0.3, 0.4), 3: (0.45, 0.6), 4: (0.65, 0.8), 5: (0.85, 1.0)},
}

# Same bands for every PSNR-calibrated kind: equal severity = roughly equal mean squared error.
PSNR_BANDS: dict[str, dict[int, tuple[float, float]]] = {
    kind: {1: (36.0, 60.0), 2: (32.5, 36.0), 3: (29.0, 32.5), 4: (25.5, 29.0), 5: (15.0, 25.5)}
    for kind in ("blur", "noise", "block", "color")
}

MOUTH_BOX_IN_FACE = (0.2, 0.62, 0.8, 0.98)  # x0, y0, x1, y1 as fractions of the Haar face box

_CASCADE = None


def _cascade() -> Any:
    """The Haar frontal-face cascade, loaded once."""
    global _CASCADE
    if _CASCADE is None:
        import cv2

        _CASCADE = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    return _CASCADE


def detect_face(frame: np.ndarray) -> tuple[int, int, int, int] | None:
    """Largest frontal face (x, y, w, h) in an RGB frame, or None."""
    import cv2

    gray = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)
    side = min(gray.shape)
    faces = _cascade().detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5,
                                        minSize=(max(24, side // 8), max(24, side // 8)))
    if len(faces) == 0:
        return None
    x, y, w, h = max((tuple(int(v) for v in f) for f in faces), key=lambda f: f[2] * f[3])
    return x, y, w, h


def mouth_box(frames: np.ndarray) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of the mouth region: Haar face on the middle frame, else the fallback."""
    _, h, w, _ = frames.shape
    face = detect_face(frames[len(frames) // 2])
    if face is None:
        return w // 3, (2 * h) // 3, (2 * w) // 3, h
    fx, fy, fw, fh = face
    a, b, c, d = MOUTH_BOX_IN_FACE
    x0, y0 = int(round(fx + a * fw)), int(round(fy + b * fh))
    x1, y1 = int(round(fx + c * fw)), int(round(fy + d * fh))
    return max(0, x0), max(0, y0), min(w, max(x1, x0 + 1)), min(h, max(y1, y0 + 1))


# -------------------------------------------------------------------------------- the corruptions
def _blur(frames: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of every frame, kernel size derived from sigma by OpenCV."""
    import cv2

    return np.stack([cv2.GaussianBlur(f, (0, 0), sigmaX=sigma, sigmaY=sigma,
                                      borderType=cv2.BORDER_REFLECT101) for f in frames])


def _noise(frames: np.ndarray, std: float, seed: int) -> np.ndarray:
    """Additive Gaussian noise, drawn frame by frame (memory stays one frame)."""
    rng = np.random.default_rng(seed)
    out = np.empty_like(frames)
    for i, f in enumerate(frames):
        n = rng.standard_normal(f.shape, dtype=np.float32) * np.float32(std)
        out[i] = np.clip(np.rint(f.astype(np.float32) + n), 0, 255).astype(np.uint8)
    return out


def _block(frames: np.ndarray, quality: int, downscale: float) -> np.ndarray:
    """JPEG round trip of every frame, optionally at reduced resolution."""
    import cv2

    _, h, w, _ = frames.shape
    out = np.empty_like(frames)
    small = (max(1, int(round(w / downscale))), max(1, int(round(h / downscale))))
    for i, f in enumerate(frames):
        g = f
        if downscale > 1.0:
            g = cv2.resize(f, small, interpolation=cv2.INTER_AREA)
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(g, cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
        if not ok:
            raise RuntimeError("JPEG encoding failed")
        g = cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        if downscale > 1.0:
            g = cv2.resize(g, (w, h), interpolation=cv2.INTER_NEAREST)
        out[i] = g
    return out


def stutter_indices(n_frames: int, fraction: float, seed: int) -> np.ndarray:
    """Source index for every output frame: frozen runs of 1-4 frames repeat the frame before."""
    k = min(n_frames - 1, int(round(fraction * n_frames)))
    frozen = np.zeros(n_frames, dtype=bool)
    rng = np.random.default_rng(seed)
    while k > 0 and frozen.sum() < k:
        length = int(min(k - frozen.sum(), rng.integers(1, 5)))
        start = int(rng.integers(1, n_frames - length + 1))
        frozen[start:start + length] = True
        frozen[0] = False
    idx = np.arange(n_frames)
    for i in range(1, n_frames):
        if frozen[i]:
            idx[i] = idx[i - 1]
    return idx


def _color(frames: np.ndarray, strength: float, direction: list[float]) -> np.ndarray:
    """Per-channel gains 1 + strength * direction."""
    gains = 1.0 + float(strength) * np.asarray(direction, dtype=np.float32)
    return np.clip(np.rint(frames.astype(np.float32) * gains), 0, 255).astype(np.uint8)


def _occlude(frames: np.ndarray, fraction: float, fill: int) -> np.ndarray:
    """Static filled rectangle covering `fraction` of the mouth box's area, centred in it."""
    x0, y0, x1, y1 = mouth_box(frames)
    bw, bh = x1 - x0, y1 - y0
    s = float(np.sqrt(np.clip(fraction, 0.0, 1.0)))
    ow, oh = max(1, int(round(bw * s))), max(1, int(round(bh * s)))
    ox, oy = x0 + (bw - ow) // 2, y0 + (bh - oh) // 2
    out = frames.copy()
    out[:, oy:oy + oh, ox:ox + ow, :] = np.uint8(fill)
    return out


def _sample_direction(rng: np.random.Generator) -> list[float]:
    """Three channel weights, zero mean and RMS 1: a colour cast, not a brightness change, whose
    size (hence PSNR) depends on `strength` and hardly on the direction drawn."""
    while True:
        d = rng.standard_normal(3)
        d -= d.mean()
        norm = float(np.sqrt(np.mean(d * d)))
        if norm > 1e-3:
            return [round(float(v), 4) for v in d / norm]


@register("frame_corruption")
class FrameCorruption(Operator):
    """One kind of picture corruption per application, graded by severity (see module doc).

    Keywords:
        kinds: the kinds sampling draws from (names from KINDS, drawn uniformly in the listed order);
            None (default) is every kind of KINDS.
        p: probability of applying. Default 1.0.
    """

    modifies = "video"

    def __init__(self, *, kinds: Sequence[str] | None = None, p: float = 1.0) -> None:
        super().__init__(p=p)
        if kinds is not None:
            check_keys(self.name, check_list(self.name, "kinds", kinds, min_length=1), KINDS, "kind")
        self.kinds: tuple[str, ...] = tuple(kinds) if kinds is not None else KINDS

    def sample_params(self, rng: np.random.Generator, severity: int) -> dict[str, Any]:
        """Pick a kind, then a strength uniform in its STRENGTH_RANGES band for the severity."""
        severity = check_severity(severity)
        kind = self.kinds[int(rng.integers(len(self.kinds)))]
        lo, hi = STRENGTH_RANGES[kind][severity]
        if kind == "block":
            strength: float | int = int(rng.integers(int(lo), int(hi) + 1))
        else:
            strength = round(float(rng.uniform(lo, hi)), 4)
        params: dict[str, Any] = {"kind": kind, "strength": strength,
                                  "seed": int(rng.integers(0, 2**31 - 1))}
        if kind == "color":
            params["direction"] = _sample_direction(rng)
        elif kind == "occlusion":
            params["fill"] = int(rng.choice([16, 64, 128]))
        return params

    def apply(self, clip: Clip, params: dict[str, Any]) -> Clip:
        """Corrupt every frame (or the timeline, for stutter); count, size and dtype are kept."""
        frames = np.asarray(clip.load_frames(), dtype=np.uint8)
        kind, strength = params["kind"], float(params["strength"])
        if kind == "blur":
            out = _blur(frames, strength)
        elif kind == "noise":
            out = _noise(frames, strength, int(params["seed"]))
        elif kind == "block":
            out = _block(frames, int(round(strength)), float(params.get("downscale", 1.0)))
        elif kind == "stutter":
            out = frames[stutter_indices(len(frames), strength, int(params["seed"]))]
        elif kind == "color":
            out = _color(frames, strength, params["direction"])
        elif kind == "occlusion":
            out = _occlude(frames, strength, int(params.get("fill", 64)))
        else:
            raise ValueError(f"frame_corruption: unknown kind {kind!r}")
        return clip.with_frames(out)

    def defect_size(self, params: dict[str, Any]) -> float:
        """1-based continuous strength in [1, 6]: the bottom of level L's range maps to L.

        Piecewise linear through (lo_1, 1), (lo_2, 2), ... (lo_5, 5), (hi_5, 6), so a strength drawn at
        level L gives a value in [L, L + 1); comparable across kinds. JPEG quality counts reversed.
        """
        kind, s = params["kind"], float(params["strength"])
        ranges = STRENGTH_RANGES[kind]
        if kind == "block":  # quality: the mild end of a level is its top
            sign, mild, worst = -1.0, 1, 0
        else:
            sign, mild, worst = 1.0, 0, 1
        xp = [sign * ranges[lvl][mild] for lvl in SEVERITY_LEVELS] + [sign * ranges[5][worst]]
        fp = [float(lvl) for lvl in SEVERITY_LEVELS] + [6.0]
        return float(np.interp(sign * s, xp, fp))
