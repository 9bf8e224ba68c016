"""Clip -> model inputs: decode, find the face, crop, log-mel; one definition shared by train/ and eval/.

The judge never sees raw pixels or waveforms: it sees
  video: float32 (T, C, H, W), the mouth / face / full-frame crop of T = window_seconds * fps frames,
         normalised per clip (zero mean, unit std over the whole clip) so brightness, contrast,
         camera and codec differences do not matter;
  audio: float32 (n_mels, R*T) log-mel with R = sr / (hop * fps) mel frames per video frame (4 with
         the defaults: 16 kHz, hop 160 = 100 Hz, 25 fps), so mel frame r*t.. r*t+r-1 belongs to
         video frame t; peak-normalised before and mean/variance-normalised (per utterance) after
         the mel, so loudness and codec colouring do not matter.

Face finding (crop "mouth" or "face"): OpenCV's Haar cascades, frontal first and then profile
(both orientations), on `detect_frames` frames sampled evenly over the window. The detections are
median-smoothed over time and interpolated to every frame. The mouth is the lower-middle part of
the face box (`mouth_*` fractions).

FALLBACK when no face is found on any sampled frame (drawn / synthetic faces, tiny or very dark
faces): a virtual face box is assumed, centred horizontally, its centre at `fallback_center_y` of
the frame height, its side `fallback_face_frac` of the shorter frame side -- the framing of a
typical talking-head shot -- and the crop is taken from it exactly as from a detected box. Which
path was used is reported in the crop info (`face_source`: "frontal" | "profile" | "fallback" |
"none" for crop "full"), which the shard cache stores per clip.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from perturb.media import DecodeAhead, FrameStream, MediaError, canonical_size, probe_and_decode_audio

# Bump whenever the meaning of a PreprocessConfig field or the computation changes: every cache
# keyed by PreprocessConfig.fingerprint() is then rebuilt.
PREPROCESS_VERSION = "1"

CROPS = ("mouth", "face", "full", "asd")  # asd: Light-ASD's lower-face crop (see crop_boxes)
AUDIO_FEATURES = ("logmel", "mfcc", "logmel_peaks", "waveform", "ge2e_mel")
# ge2e_mel: the input of resemblyzer's GE2E speaker encoder (train/encoders/resemblyzer.py): librosa's
# power mel (Slaney scale and filter norm) after its volume normalisation, stored as a natural log
# waveform: the samples themselves, (1, n_samples) at sr, for judges that compute their own features
# (train/qwen_omni.py: Whisper's log-mel inside the model)
# logmel_peaks: the log-mel plus one row per threshold here: the share of each mel frame's samples with
# |x| >= threshold * the clip's 99.9th percentile of |x| (a hard-clipped recording piles its samples up
# at the top; the log-mel barely shows it). The percentile, not the peak: the AAC of the shards rings
# over the clipped plateaus, so the single largest sample says little.
PEAK_THRESHOLDS = (0.7, 0.8, 0.9)
VIDEO_NORMS = ("clip", "unit")
FACE_DETECTORS = ("haar", "mediapipe")
VIDEO_INPUTS = ("crop", "landmarks")

# The range of every number of the preprocessing (a training YAML's `preprocess:` section, an export's
# preprocessing.json): key -> (lo, hi, why); integer bounds mean the value must be an integer. Real
# configs sit far inside them; the bounds keep one clip's tensors to a few hundred MB at most
# (30 s x 60 fps of 256 x 256 crops; 30 s x 48 kHz / hop 16 mel frames of 256 bins).
PREPROCESS_RANGES: dict[str, tuple[float, float, str]] = {
    "window_seconds": (0.2, 30.0, "seconds per clip"),
    "fps": (1, 60, "video frames per second"),
    "sr": (8000, 48000, "audio sample rate in Hz"),
    "crop_size": (4, 1024, "crop height and width in pixels (frames x pixels capped: MAX_VIDEO_VALUES)"),
    "n_mels": (4, 256, "mel bins"),
    "n_fft": (64, 8192, "FFT size in samples"),
    "win_length": (16, 8192, "STFT window in samples, at most n_fft"),
    "hop": (16, 4096, "samples per mel frame"),
    "f_min": (0.0, 24000.0, "lowest mel frequency in Hz, below f_max"),
    "f_max": (1.0, 24000.0, "highest mel frequency in Hz"),
    "n_mfcc": (1, 128, "MFCC coefficients"),
    "detect_frames": (1, 100, "frames searched for a face per window"),
    "detect_max_side": (32, 4096, "longest side of a frame searched for a face, in pixels"),
    "detect_scale_factor": (1.01, 3.0, "step between face-search scales (above 1)"),
    "detect_min_neighbors": (0, 50, "neighbouring detections that confirm a face"),
    "detect_min_face_frac": (0.0, 1.0, "a share of the shorter frame side"),
    "mouth_center_y": (0.0, 1.0, "a share of the face height"),
    "mouth_width": (0.05, 2.0, "a multiple of the face width"),
    "face_scale": (0.1, 4.0, "a multiple of the face box side"),
    "fallback_face_frac": (0.05, 1.0, "a share of the shorter frame side"),
    "fallback_center_y": (0.0, 1.0, "a share of the frame height"),
}
MAX_LIST_ITEMS = 16  # a list-valued number (crop_size, widths) has at most this many items
# values of one clip's video tensor at most: 30 s x 60 fps of 256 x 256 colour crops, as the field
# ranges allowed before whole frames (up to 1024 px a side, at a lower frame rate) were possible
MAX_VIDEO_VALUES = 30 * 60 * 3 * 256 * 256


def check_range(where: str, name: str, value: Any, bounds: tuple[float, float, str]) -> Any:
    """`value` if it is a number within bounds = (lo, hi, why), an integer where lo and hi are (a list:
    each item); else ValueError in one line naming where, name, the value and the range."""
    lo, hi, why = bounds
    integer = isinstance(lo, int) and isinstance(hi, int)
    if isinstance(value, (list, tuple)):
        if not 1 <= len(value) <= MAX_LIST_ITEMS:
            raise ValueError(f"{where}: {name} must be a list of 1 to {MAX_LIST_ITEMS} numbers, got "
                             f"{len(value)}: {_short(value)}")
        for item in value:
            check_range(where, f"{name}[]", item, bounds)
        return value
    kinds = (int, np.integer) if integer else (int, float, np.integer, np.floating)
    ok = isinstance(value, kinds) and not isinstance(value, (bool, np.bool_)) and lo <= value <= hi
    if not ok:  # NaN fails lo <= value too
        raise ValueError(f"{where}: {name} must be {'an integer' if integer else 'a number'} in "
                         f"{range_text(bounds)}, got {_short(value)}")
    return value


def range_text(bounds: tuple[float, float, str]) -> str:
    """"[lo, hi] (why)", integers written out in full."""
    lo, hi, why = bounds
    return f"[{lo if isinstance(lo, int) else f'{lo:g}'}, {hi if isinstance(hi, int) else f'{hi:g}'}] ({why})"


def _short(value: Any, limit: int = 80) -> str:
    """repr(value), cut to `limit` characters: an error stays one readable line."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def check_values(where: str, section: Any, ranges: dict[str, tuple[float, float, str]],
                 none_ok: bool = False) -> None:
    """check_range every key of a config section (a mapping) that `ranges` names; None passes when
    none_ok (a field whose None means "unset")."""
    if section is None:
        return
    if not isinstance(section, dict):
        raise ValueError(f"{where}: must be a mapping of keys to values, not {type(section).__name__}")
    for name, value in section.items():
        if name in ranges and not (none_ok and value is None):
            check_range(where, name, value, ranges[name])


@dataclass
class PreprocessConfig:
    """Everything that decides what the model sees. JSON round-trips; fingerprint() keys caches.

    Every number has a range (PREPROCESS_RANGES), checked on construction: a ValueError names the
    field, the value and the range."""

    window_seconds: float = 5.0
    fps: int = 25
    sr: int = 16000
    crop: str = "mouth"                    # "mouth" | "face" | "full"
    crop_size: tuple[int, int] = (32, 48)  # (height, width) of the crop fed to the model
    grayscale: bool = True
    n_mels: int = 40
    n_fft: int = 512
    win_length: int = 400                  # 25 ms
    hop: int = 160                         # 10 ms = 100 Hz = 4 mel frames per video frame at 25 fps
    f_min: float = 50.0
    f_max: float = 8000.0
    audio_norm: str = "cmvn"               # "cmvn": per-bin mean removed (channel / codec invariant);
                                           # "global": one mean / std (keeps the voice's spectral shape)
    audio_features: str = "logmel"         # "logmel" (n_mels bins) | "logmel_peaks" (n_mels + 3 rows,
                                           # see PEAK_THRESHOLDS) | "mfcc" (n_mfcc coefficients as
                                           # python_speech_features computes them: Light-ASD's input)
    n_mfcc: int = 13
    video_norm: str = "clip"               # "clip": zero mean / unit std over the clip;
                                           # "unit": pixel / 255 (encoders that normalise themselves)
    face_detector: str = "haar"            # "haar" (OpenCV cascades) | "mediapipe" (FaceMesh landmarks)
    video_input: str = "crop"              # "crop": pixels of the crop; "landmarks": normalised lip and
                                           # jaw landmarks (T, 114), train/landmarks.py (needs mediapipe)
    # face detector (OpenCV Haar cascades)
    detect_frames: int = 5                 # frames sampled per window for detection
    detect_max_side: int = 320             # frames are resized to this longest side for detection
    detect_scale_factor: float = 1.1
    detect_min_neighbors: int = 4
    detect_min_face_frac: float = 0.15     # smallest face side, as a fraction of the shorter side
    use_profile: bool = True
    # crop geometry relative to the face box (x0, y0, x1, y1)
    mouth_center_y: float = 0.78           # mouth centre, fraction of the face height from its top
    mouth_width: float = 0.62              # mouth crop width, fraction of the face width
    face_scale: float = 1.25               # face crop side, multiple of the face box side
    # documented fallback when no face is found (see module docstring)
    fallback_face_frac: float = 0.6
    fallback_center_y: float = 0.45
    extra: dict[str, Any] = field(default_factory=dict)  # free-form, part of the fingerprint

    def __post_init__(self) -> None:
        check_values("preprocess", {f.name: getattr(self, f.name) for f in fields(self)}, PREPROCESS_RANGES)
        if not isinstance(self.crop_size, (list, tuple)) or len(self.crop_size) != 2:
            raise ValueError(f"preprocess: crop_size must be [height, width], got {self.crop_size!r}")
        for name in ("grayscale", "use_profile"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"preprocess: {name} must be true or false, got {getattr(self, name)!r}")
        if not isinstance(self.extra, dict):
            raise ValueError(f"preprocess: extra must be a mapping, got {self.extra!r}")
        if self.win_length > self.n_fft or self.f_min >= self.f_max:
            raise ValueError(f"preprocess: needs win_length <= n_fft and f_min < f_max, got win_length "
                             f"{self.win_length}, n_fft {self.n_fft}, f_min {self.f_min}, f_max {self.f_max}")
        self.crop_size = tuple(int(v) for v in self.crop_size)  # YAML / JSON give lists
        if self.crop not in CROPS:
            raise ValueError(f"crop must be one of {CROPS}, got {self.crop!r}")
        if self.audio_norm not in ("cmvn", "global"):
            raise ValueError(f"audio_norm must be cmvn or global, got {self.audio_norm!r}")
        for name, value, valid in (("audio_features", self.audio_features, AUDIO_FEATURES),
                                   ("video_norm", self.video_norm, VIDEO_NORMS),
                                   ("face_detector", self.face_detector, FACE_DETECTORS),
                                   ("video_input", self.video_input, VIDEO_INPUTS)):
            if value not in valid:
                raise ValueError(f"{name} must be one of {valid}, got {value!r}")
        if self.video_input == "landmarks" and self.face_detector != "mediapipe":
            raise ValueError("video_input landmarks needs face_detector mediapipe")
        if self.n_frames * self.channels * self.crop_size[0] * self.crop_size[1] > MAX_VIDEO_VALUES:
            raise ValueError(f"preprocess: {self.n_frames} frames of {list(self.crop_size)} pixels x {self.channels} "
                             f"channels is over {MAX_VIDEO_VALUES} values per clip: lower fps, window_seconds or "
                             f"crop_size")
        if self.sr % (self.hop * self.fps):
            raise ValueError("sr must be a multiple of hop * fps (mel frames aligned with video frames)")

    # geometry
    @property
    def n_frames(self) -> int:
        return int(round(self.window_seconds * self.fps))

    @property
    def mel_per_frame(self) -> int:
        return self.sr // (self.hop * self.fps)

    @property
    def n_samples(self) -> int:
        return self.n_frames * self.sr // self.fps

    @property
    def channels(self) -> int:
        return 1 if self.grayscale else 3

    @property
    def n_audio_features(self) -> int:
        """Rows of the audio input: mel bins (+ peak rows) or MFCCs."""
        if self.audio_features == "logmel_peaks":
            return self.n_mels + len(PEAK_THRESHOLDS)
        if self.audio_features == "waveform":
            return 1
        return self.n_mfcc if self.audio_features == "mfcc" else self.n_mels

    def input_shapes(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(video, audio) shapes of one window as make_inputs returns them (no batch dimension)."""
        if self.video_input == "landmarks":
            from .landmarks import N_FEATURES

            video: tuple[int, ...] = (self.n_frames, N_FEATURES)
        else:
            video = (self.n_frames, self.channels, *self.crop_size)
        if self.audio_features == "waveform":
            return video, (1, self.n_samples)
        return video, (self.n_audio_features, self.n_frames * self.mel_per_frame)

    # serialisation
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["crop_size"] = list(self.crop_size)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PreprocessConfig":
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names - {"preprocess_version", "fingerprint"}
        if unknown:
            raise ValueError(f"unknown preprocessing fields: {sorted(unknown)}; valid fields: {sorted(names)}")
        return cls(**{k: v for k, v in d.items() if k in names})

    def save(self, path: str | Path) -> None:
        d = self.to_dict()
        d["preprocess_version"] = PREPROCESS_VERSION
        d["fingerprint"] = self.fingerprint()
        Path(path).write_text(json.dumps(d, indent=2, sort_keys=True))

    @classmethod
    def load(cls, path: str | Path) -> "PreprocessConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))

    def fingerprint(self) -> str:
        blob = json.dumps({"v": PREPROCESS_VERSION, **self.to_dict()}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------- decode

ANALYSIS_MAX_SIDE = 512  # frames are decoded with their longest side at most this (the shards' canonical size)

def _tmp_dir() -> str | None:
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def _analysis_size(info, max_side: int | None = ANALYSIS_MAX_SIDE) -> tuple[int, int]:
    """(width, height) frames are decoded at: the display size, longest side capped (eval may get 4K)
    the way the shards' canonical size is; a picture within the cap keeps its size as it is."""
    w, h = info.width, info.height
    return canonical_size(w, h, max_side) if max_side and max(w, h) > max_side else (w, h)


def _decode(path: str, cfg: PreprocessConfig, start: float | None, duration: float | None,
            max_side: int | None = ANALYSIS_MAX_SIDE) -> tuple[np.ndarray, np.ndarray]:
    info, audio = probe_and_decode_audio(path, cfg.sr, start=start or 0.0, duration=duration)
    if not info.has_video:
        raise MediaError(f"no video stream: {path}")
    w, h = _analysis_size(info, max_side)
    span = duration if duration is not None else max(0.0, (info.duration or 0.0) - (start or 0.0))
    with FrameStream(path, w, h, cfg.fps, start=start, duration=duration) as stream:
        frames = _read_all(stream, int(math.ceil(span * cfg.fps)) + 2)
    if audio is None:  # a silent video is still a valid input (the judge should say "no" to lip sync)
        audio = np.zeros(int(round(len(frames) / cfg.fps * cfg.sr)), dtype=np.float32)
    return frames, audio


def _read_all(stream: FrameStream, expected: int) -> np.ndarray:
    """Every frame left in `stream`, read into an array sized for the `expected` count (grown if more come)."""
    blocks, size = [], max(1, expected)
    while True:
        block = np.empty((size, *stream.frame_shape), np.uint8)
        n = stream.read_into(block)
        blocks.append(block[:n])
        if n < size:
            return blocks[0] if len(blocks) == 1 else np.concatenate(blocks)
        size *= 2


def load_media(src: str | Path | bytes, cfg: PreprocessConfig | None = None,
               start: float | None = None, duration: float | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """Decode any file ffmpeg reads (or its bytes, e.g. an mp4 out of a shard).

    Returns (frames uint8 (T, H, W, 3) resampled to constant cfg.fps, audio float32 mono at cfg.sr).
    Bytes go through a temporary file (in /dev/shm when available): an mp4 without faststart
    cannot be read from a pipe.
    """
    cfg = cfg or PreprocessConfig()
    if isinstance(src, (bytes, bytearray, memoryview)):
        with tempfile.NamedTemporaryFile(suffix=".mp4", dir=_tmp_dir()) as tmp:
            tmp.write(bytes(src))
            tmp.flush()
            try:
                return _decode(tmp.name, cfg, start, duration)
            except MediaError as err:  # the temporary file's name means nothing to the reader
                raise MediaError(str(err).replace(tmp.name, "the mp4 bytes")) from None
    return _decode(str(src), cfg, start, duration)


# ------------------------------------------------------------------------------------ face boxes

_CASCADES: dict[str, Any] = {}


def _cascade(name: str):
    import cv2

    if name not in _CASCADES:
        c = cv2.CascadeClassifier(os.path.join(cv2.data.haarcascades, name))
        if c.empty():
            raise RuntimeError(f"cannot load Haar cascade {name}")
        _CASCADES[name] = c
    return _CASCADES[name]


def _detect_one(gray: np.ndarray, cfg: PreprocessConfig, name: str, flip: bool = False):
    found = _detect_all(gray, cfg, name, flip)
    return found[0] if found else None


def _detect_all(gray: np.ndarray, cfg: PreprocessConfig, name: str, flip: bool = False) -> list[tuple]:
    """Every face box (x0, y0, x1, y1) the cascade finds, largest first (the first of equals first)."""
    img = gray[:, ::-1].copy() if flip else gray
    m = max(12, int(cfg.detect_min_face_frac * min(img.shape)))
    raw = _cascade(name).detectMultiScale(
        img, scaleFactor=cfg.detect_scale_factor, minNeighbors=cfg.detect_min_neighbors, minSize=(m, m))
    out = []
    for x, y, bw, bh in sorted(raw, key=lambda b: -(b[2] * b[3])) if len(raw) else []:
        b = (float(x), float(y), float(x + bw), float(y + bh))
        if flip:
            w = img.shape[1]
            b = (w - b[2], b[1], w - b[0], b[3])
        out.append(b)
    return out


def find_face_boxes(frames: np.ndarray, cfg: PreprocessConfig) -> tuple[np.ndarray, dict[str, Any]]:
    """Per-frame face boxes (T, 4) as (x0, y0, x1, y1) pixels, and how they were found."""
    boxes, info, _ = find_face_tracks(frames, cfg, 1)
    return boxes, info


def find_face_tracks(frames: np.ndarray, cfg: PreprocessConfig, max_faces: int
                     ) -> tuple[np.ndarray, dict[str, Any], list[tuple[np.ndarray, int]]]:
    """find_face_boxes' (boxes, info), plus [(boxes (T, 4), detections)] of each face when at least
    two faces are each found on two or more of the sampled frames (else []): the detections of the
    sampled frames joined into tracks by where they are (haar_tracks), up to max_faces."""
    import cv2

    t, h, w = frames.shape[:3]
    scale = min(1.0, cfg.detect_max_side / max(h, w))
    idx = np.unique(np.linspace(0, max(t - 1, 0), num=max(1, cfg.detect_frames)).round().astype(int))
    found: list[tuple[int, tuple]] = []
    seen: list[tuple[int, list[tuple]]] = []  # every box of each sampled frame (max_faces > 1)
    source = "fallback"
    for cascade, flips, label in (("haarcascade_frontalface_default.xml", (False,), "frontal"),
                                  ("haarcascade_profileface.xml", (False, True), "profile")):
        if label == "profile" and not cfg.use_profile:
            break
        for i in idx:
            gray = cv2.cvtColor(frames[i], cv2.COLOR_RGB2GRAY)
            if scale < 1.0:
                gray = cv2.resize(gray, (int(w * scale), int(h * scale)), interpolation=cv2.INTER_AREA)
            gray = cv2.equalizeHist(gray)
            for flip in flips:
                every = _detect_all(gray, cfg, cascade, flip) if max_faces > 1 else []
                b = (every[0] if every else None) if max_faces > 1 else _detect_one(gray, cfg, cascade, flip)
                if b is not None:
                    found.append((int(i), tuple(v / scale for v in b)))
                    seen.append((int(i), [tuple(v / scale for v in bx) for bx in every]))
                    break
        if found:
            source = label
            break
    if not found:
        side = cfg.fallback_face_frac * min(h, w)
        cx, cy = w / 2.0, cfg.fallback_center_y * h
        box = np.array([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2])
        return np.tile(box, (t, 1)), {"face_source": "fallback", "detected": 0, "sampled": len(idx)}, []
    tracks = haar_tracks(seen, max_faces)
    info = {"face_source": source, "detected": int(len(found)), "sampled": int(len(idx))}
    return _track_boxes(found, t), info, [(_track_boxes(tr, t), len(tr)) for tr in tracks] if len(tracks) >= 2 else []


def haar_tracks(seen: list[tuple[int, list[tuple]]], max_faces: int) -> list[list[tuple[int, tuple]]]:
    """Detections per sampled frame [(frame, [boxes])] -> up to max_faces tracks [(frame, box)], most
    detections first, each found on at least two frames: a box continues the track whose last box
    holds its centre (one box per track and frame), else starts one."""
    tracks: list[list[tuple[int, tuple]]] = []
    for i, boxes in seen:
        taken: set[int] = set()
        for b in boxes:
            c = ((b[0] + b[2]) / 2, (b[1] + b[3]) / 2)
            for k, tr in enumerate(tracks):
                last = tr[-1][1]
                if k not in taken and last[0] <= c[0] <= last[2] and last[1] <= c[1] <= last[3]:
                    tr.append((i, b))
                    taken.add(k)
                    break
            else:
                tracks.append([(i, b)])
                taken.add(len(tracks) - 1)
    return sorted((tr for tr in tracks if len(tr) >= 2), key=lambda tr: -len(tr))[:max_faces]


def _track_boxes(found: list[tuple[int, tuple]], t: int) -> np.ndarray:
    """Detections [(frame, box)] of one face -> per-frame boxes (T, 4): smoothed and interpolated."""
    ii = np.array([i for i, _ in found])
    bb = np.array([b for _, b in found], dtype=np.float64)
    # Temporal smoothing: running median over 3 detections (kills single-frame jumps and false
    # positives), then keep the size constant (median) so the crop does not breathe.
    if len(bb) >= 3:
        sm = bb.copy()
        for k in range(len(bb)):
            sm[k] = np.median(bb[max(0, k - 1): k + 2], axis=0)
        bb = sm
    centres = (bb[:, :2] + bb[:, 2:]) / 2
    size = np.median(bb[:, 2:] - bb[:, :2], axis=0)
    tt = np.arange(t)
    cx = np.interp(tt, ii, centres[:, 0])
    cy = np.interp(tt, ii, centres[:, 1])
    return np.stack([cx - size[0] / 2, cy - size[1] / 2, cx + size[0] / 2, cy + size[1] / 2], axis=1)


def crop_boxes(face_boxes: np.ndarray, frame_hw: tuple[int, int], cfg: PreprocessConfig) -> np.ndarray:
    """Face boxes -> crop boxes (T, 4) with the aspect ratio of cfg.crop_size."""
    ch, cw = cfg.crop_size
    h, w = frame_hw
    if cfg.crop == "full":
        return np.tile(np.array([0.0, 0.0, float(w), float(h)]), (len(face_boxes), 1))
    x0, y0, x1, y1 = (face_boxes[:, k] for k in range(4))
    fw, fh = x1 - x0, y1 - y0
    cx = (x0 + x1) / 2
    if cfg.crop == "mouth":
        bw = cfg.mouth_width * fw
        bh = bw * ch / cw
        cy = y0 + cfg.mouth_center_y * fh
    elif cfg.crop == "asd":
        # Light-ASD's crop (its Columbia_test.py): a square of side 2.8 s around the face box (s =
        # half its longer side) from the box top down, resized to 224, centre 112 kept: x in
        # cx +- 0.7 s, y from cy - 0.3 s to cy + 1.1 s. The lower face, mouth near the centre.
        half = np.maximum(fw, fh) / 2
        bw = bh = 1.4 * half
        cy = (y0 + y1) / 2 + 0.4 * half
    else:  # face
        side = cfg.face_scale * np.maximum(fw, fh)
        bw, bh = side * min(1.0, cw / ch), side * min(1.0, ch / cw)
        cy = (y0 + y1) / 2
    return np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1)


def extract_crops(frames: np.ndarray, boxes: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """Resample each frame's box to crop_size (edges replicated outside the frame): uint8 (T, h, w, C)."""
    import cv2

    ch, cw = cfg.crop_size
    out = np.empty((len(frames), ch, cw, 3), dtype=np.uint8)
    for i, (f, (x0, y0, x1, y1)) in enumerate(zip(frames, boxes)):
        sx, sy = cw / max(x1 - x0, 1e-3), ch / max(y1 - y0, 1e-3)
        m = np.array([[sx, 0, -x0 * sx], [0, sy, -y0 * sy]], dtype=np.float64)
        interp = cv2.INTER_AREA if sx < 1 and sy < 1 else cv2.INTER_LINEAR
        out[i] = cv2.warpAffine(f, m, (cw, ch), flags=interp, borderMode=cv2.BORDER_REPLICATE)
    if cfg.grayscale:
        g = (out[..., 0] * 0.299 + out[..., 1] * 0.587 + out[..., 2] * 0.114).round()
        return g.astype(np.uint8)[..., None]
    return out


# ------------------------------------------------------------------------------------ audio

_MEL: dict[tuple, Any] = {}


def _mel_transform(cfg: PreprocessConfig):
    key = (cfg.sr, cfg.n_fft, cfg.win_length, cfg.hop, cfg.n_mels, cfg.f_min, cfg.f_max)
    if key not in _MEL:
        import torchaudio

        _MEL[key] = torchaudio.transforms.MelSpectrogram(
            sample_rate=cfg.sr, n_fft=cfg.n_fft, win_length=cfg.win_length, hop_length=cfg.hop,
            f_min=cfg.f_min, f_max=min(cfg.f_max, cfg.sr / 2), n_mels=cfg.n_mels, power=2.0, center=True)
    return _MEL[key]


def log_mel(audio: np.ndarray | torch.Tensor, cfg: PreprocessConfig) -> torch.Tensor:
    """Peak-normalised waveform -> log-mel -> per-utterance normalisation: (n_mels, frames).

    cfg.audio_norm "cmvn" removes each mel bin's mean over the clip (microphone / codec colouring
    cancels), "global" one mean for all bins (the long-term spectrum -- the voice -- is kept);
    both then divide by the clip's std (loudness cancels).
    """
    x = torch.as_tensor(np.asarray(audio, dtype=np.float32))
    x = x / x.abs().max().clamp_min(1e-4)
    with torch.no_grad():
        mel = _mel_transform(cfg)(x)
    lm = torch.log(mel + 1e-6)
    lm = lm - (lm.mean(dim=1, keepdim=True) if cfg.audio_norm == "cmvn" else lm.mean())
    return lm / lm.std().clamp_min(1e-3)


_MFCC: dict[tuple, Any] = {}


def _mfcc_matrices(cfg: PreprocessConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(filterbank (nfilt, n_fft/2+1), DCT (nfilt, n_mfcc)) of python_speech_features' mfcc defaults."""
    n_fft, nfilt = cfg.n_fft, 26
    key = (cfg.sr, n_fft, nfilt, cfg.n_mfcc)
    if key not in _MFCC:
        import torchaudio

        hz2mel = lambda hz: 2595 * np.log10(1 + hz / 700.0)  # noqa: E731
        mel2hz = lambda mel: 700 * (10 ** (mel / 2595.0) - 1)  # noqa: E731
        # triangles on integer FFT bins, exactly as python_speech_features.get_filterbanks
        bins = np.floor((n_fft + 1) * mel2hz(np.linspace(hz2mel(0), hz2mel(cfg.sr / 2), nfilt + 2)) / cfg.sr)
        fb = np.zeros((nfilt, n_fft // 2 + 1))
        for j in range(nfilt):
            lo, mid, hi = int(bins[j]), int(bins[j + 1]), int(bins[j + 2])
            fb[j, lo:mid] = (np.arange(lo, mid) - bins[j]) / (bins[j + 1] - bins[j])
            fb[j, mid:hi] = (bins[j + 2] - np.arange(mid, hi)) / (bins[j + 2] - bins[j + 1])
        dct = torchaudio.functional.create_dct(cfg.n_mfcc, nfilt, norm="ortho")  # DCT-II, as scipy's ortho
        _MFCC[key] = (torch.from_numpy(fb).float(), dct)
    return _MFCC[key]


def mfcc(audio: np.ndarray | torch.Tensor, cfg: PreprocessConfig) -> torch.Tensor:
    """python_speech_features.mfcc(audio * 32768, sr, numcep=n_mfcc) in torch: (n_mfcc, frames).

    The pretrained Light-ASD network was trained on exactly these features (int16-scaled audio,
    pre-emphasis 0.97, rectangular 25 ms frames every 10 ms, 26 triangular filters on 512-point
    power spectra, log, orthonormal DCT, lifter 22, c0 replaced by the log frame energy), so they are
    reproduced, not approximated. Frames: 1 + ceil((n - win) / hop), the last one zero-padded.
    """
    x = torch.as_tensor(np.asarray(audio, dtype=np.float32)).double() * 32768.0
    x = torch.cat([x[:1], x[1:] - 0.97 * x[:-1]])
    win, hop = cfg.win_length, cfg.hop
    n_frames = 1 if len(x) <= win else 1 + math.ceil((len(x) - win) / hop)
    x = torch.nn.functional.pad(x, (0, (n_frames - 1) * hop + win - len(x)))
    frames = x.unfold(0, win, hop)                                   # (frames, win)
    power = torch.fft.rfft(frames, n=cfg.n_fft).abs() ** 2 / cfg.n_fft
    fb, dct = _mfcc_matrices(cfg)
    eps = float(np.finfo(float).eps)
    energy = power.sum(1).clamp_min(eps)
    feat = torch.log((power @ fb.double().T).clamp_min(eps)) @ dct.double()
    n = torch.arange(cfg.n_mfcc, dtype=torch.float64)
    feat = feat * (1 + 11.0 * torch.sin(math.pi * n / 22))           # lifter L = 22
    feat[:, 0] = torch.log(energy)
    return feat.T.float()


_GE2E_MEL: dict[tuple, torch.Tensor] = {}
GE2E_TARGET_DBFS = -30.0  # resemblyzer's audio_norm_target_dBFS (quieter clips are raised to it, louder kept)


def ge2e_mel(audio: np.ndarray | torch.Tensor, cfg: PreprocessConfig) -> torch.Tensor:
    """log of resemblyzer's wav_to_mel_spectrogram(normalize_volume(audio, -30, increase_only=True)):
    (n_mels, frames), librosa.feature.melspectrogram's defaults (periodic Hann window, centred frames
    padded with zeros, power 2, Slaney mel scale and filter norm, 0 .. sr/2) at cfg's sr / n_fft / hop /
    n_mels. The log keeps the training augmentation's feature noise a gain jitter; the encoder undoes it.
    resemblyzer's VAD trimming of silences is left out: it would move the speech against the picture."""
    x = torch.as_tensor(np.asarray(audio, dtype=np.float32)).double()
    rms_db = 10 * torch.log10((x ** 2).mean().clamp_min(1e-20))
    if rms_db < GE2E_TARGET_DBFS:
        x = x * 10 ** ((GE2E_TARGET_DBFS - rms_db) / 20)
    key = (cfg.sr, cfg.n_fft, cfg.n_mels)
    if key not in _GE2E_MEL:
        import torchaudio

        _GE2E_MEL[key] = torchaudio.functional.melscale_fbanks(
            cfg.n_fft // 2 + 1, 0.0, cfg.sr / 2, cfg.n_mels, cfg.sr, norm="slaney", mel_scale="slaney").double()
    spec = torch.stft(x, cfg.n_fft, cfg.hop, cfg.win_length, torch.hann_window(cfg.win_length, dtype=torch.float64),
                      center=True, pad_mode="constant", return_complex=True).abs() ** 2
    return torch.log((_GE2E_MEL[key].T @ spec).clamp_min(1e-12)).float()


def peak_occupancy(audio: np.ndarray, hop: int, n_frames: int) -> torch.Tensor:
    """(len(PEAK_THRESHOLDS), n_frames): per block of `hop` samples (aligned with the mel frames), the
    share of samples with |x| >= threshold * the clip's 99.9th percentile of |x|."""
    a = np.abs(np.asarray(audio, dtype=np.float32))
    top = float(np.quantile(a, 0.999)) if len(a) else 0.0
    out = np.zeros((len(PEAK_THRESHOLDS), n_frames), np.float32)
    if top <= 0:
        return torch.from_numpy(out)
    n = min(len(a) // hop, n_frames)
    blocks = a[: n * hop].reshape(n, hop)
    for i, t in enumerate(PEAK_THRESHOLDS):
        out[i, :n] = (blocks >= t * top).mean(axis=1)
    return torch.from_numpy(out)


def audio_features(audio: np.ndarray, cfg: PreprocessConfig) -> torch.Tensor:
    """(n_audio_features, n_frames * mel_per_frame): log-mel or MFCCs of a window, cut / padded; or
    ("waveform") the window's samples as they are, (1, n_samples)."""
    if cfg.audio_features == "waveform":  # fit_window made it exactly n_samples long
        return torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))[None].clone()
    feats = {"mfcc": mfcc, "ge2e_mel": ge2e_mel}.get(cfg.audio_features, log_mel)(audio, cfg)
    if cfg.audio_features == "logmel_peaks":
        feats = torch.cat([feats, peak_occupancy(audio, cfg.hop, feats.shape[1])], dim=0)
    need = cfg.n_frames * cfg.mel_per_frame
    feats = feats[:, :need]
    if feats.shape[1] < need:  # MFCC frames stop a few short of the padded mel count
        feats = torch.nn.functional.pad(feats, (0, need - feats.shape[1]), mode="replicate")
    return feats.contiguous()


# ------------------------------------------------------------------------------------ inputs

def fit_window(frames: np.ndarray, audio: np.ndarray, cfg: PreprocessConfig) -> tuple[np.ndarray, np.ndarray]:
    """Crop or pad to exactly cfg.window_seconds (frames: repeat the last one; audio: silence)."""
    t, n = cfg.n_frames, cfg.n_samples
    if len(frames) == 0:
        raise MediaError("no frames decoded")
    if len(frames) >= t:
        frames = frames[:t]
    else:
        frames = np.concatenate([frames, np.repeat(frames[-1:], t - len(frames), axis=0)])
    audio = np.asarray(audio, dtype=np.float32)
    audio = audio[:n] if len(audio) >= n else np.pad(audio, (0, n - len(audio)))
    return frames, audio


def normalise_video(crops: np.ndarray, mode: str = "clip") -> torch.Tensor:
    """uint8 (T, H, W, C) -> float32 (T, C, H, W): pixel / 255, then ("clip") zero mean and unit
    std over the whole clip."""
    v = torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2).float() / 255.0
    return v if mode == "unit" else (v - v.mean()) / v.std().clamp_min(1e-3)


# PreprocessConfig fields that make_inputs reads only after the face is found (crop geometry, pixels,
# sound): configs that differ in nothing else find the same face in the same window.
AFTER_FACE_FIELDS = ("crop", "crop_size", "grayscale", "n_mels", "n_fft", "win_length", "hop", "f_min", "f_max",
                     "audio_norm", "audio_features", "n_mfcc", "video_norm", "video_input", "mouth_center_y",
                     "mouth_width", "face_scale")


def _face_step_key(cfg: PreprocessConfig) -> str:
    no_face = cfg.crop == "full" and cfg.video_input == "crop"
    rest = {k: v for k, v in cfg.to_dict().items() if k not in AFTER_FACE_FIELDS}
    return json.dumps({"no_face": no_face, **rest}, sort_keys=True, default=str)


def _find_face(frames: np.ndarray, cfg: PreprocessConfig, max_faces: int = 1
               ) -> tuple[np.ndarray, dict[str, Any], np.ndarray | None, list[tuple]]:
    """(face boxes (T, 4), info, FaceMesh landmarks or None, faces) of a window fitted to cfg. faces:
    [] for one face (or none, or max_faces 1), else [(face boxes, landmarks or None, frames found)]
    of each face."""
    if cfg.crop == "full" and cfg.video_input == "crop":
        return np.zeros((len(frames), 4)), {"face_source": "none", "detected": 0, "sampled": 0}, None, []
    if cfg.face_detector == "mediapipe":
        from .landmarks import boxes_from_landmarks, face_landmarks_multi

        landmarks, info, several = face_landmarks_multi(frames, max_faces)
        if landmarks is None and several:  # the faces were found by the search for more faces only
            landmarks, info["detected"] = several[0]
        if landmarks is not None:
            info["face_frames"] = info["detected"]
            return boxes_from_landmarks(landmarks), info, landmarks, \
                [(boxes_from_landmarks(lm), lm, n) for lm, n in several]
        # no face for FaceMesh: the cascades (and their documented fallback) find the crop
        face, info, _ = find_face_tracks(frames, cfg, 1)
        info["face_source"] = f"{info['face_source']} (no mediapipe face)"
        info["face_frames"] = _frames_found(info["detected"], info, len(frames))
        return face, info, None, []
    face, info, tracks = find_face_tracks(frames, cfg, max_faces)
    info["face_frames"] = _frames_found(info["detected"], info, len(frames))
    return face, info, None, [(boxes, None, _frames_found(n, info, len(frames))) for boxes, n in tracks]


def _frames_found(detections: int, info: dict[str, Any], t: int) -> int:
    """The cascades' detections on the sampled frames as frames: their share of the window's t frames."""
    return int(round(detections * t / max(info["sampled"], 1)))


def make_inputs(frames: np.ndarray, audio: np.ndarray, cfg: PreprocessConfig,
                return_info: bool = False, faces: dict[str, tuple] | None = None, max_faces: int = 1):
    """One window -> {"video": (T, C, H, W) float32, "audio": (n_mels, R*T) float32}.

    frames: uint8 (T', H, W, 3) at cfg.fps; audio: float32 mono at cfg.sr; both padded / cut to
    exactly cfg.window_seconds. With return_info, also returns how the crop was found. faces: a dict
    shared by the calls for several configs on the same window (windows_for_configs): the face is
    found once for the configs that would find the same one.

    max_faces > 1: a window that shows several faces (up to max_faces, _find_face) gets the inputs of
    each in info["faces"] ([{"box", "frames", "inputs"}], most tracked first; the first one's inputs are
    the window's inputs); a window with one face is prepared exactly as with max_faces 1. info
    "face_box" / "face_frames": the median face box (x0, y0, x1, y1, in pixels of the frames) and the
    frames it was found on, when a face was found.
    """
    frames, audio = fit_window(frames, audio, cfg)
    if faces is None:
        face, info, landmarks, several = _find_face(frames, cfg, max_faces)
    else:
        key = f"{_face_step_key(cfg)}|{max_faces}"
        if key not in faces:
            faces[key] = _find_face(frames, cfg, max_faces)
        face, info, landmarks, several = faces[key]
        info = dict(info)
    sound = audio_features(audio, cfg)
    per_face = [{"box": _median_box(f), "frames": n, "inputs": _face_inputs(frames, f, lm, sound, cfg)}
                for f, lm, n in several]
    if per_face:
        inputs = per_face[0]["inputs"]
        boxes = crop_boxes(several[0][0], frames.shape[1:3], cfg)
    else:
        inputs = _face_inputs(frames, face, landmarks, sound, cfg)
        boxes = crop_boxes(face, frames.shape[1:3], cfg)
    if return_info:
        info = dict(info, crop=cfg.crop, frame_hw=list(frames.shape[1:3]),
                    box_median=[round(float(v), 1) for v in np.median(boxes, axis=0)])
        if info.get("detected", 0) > 0:
            info["face_box"] = per_face[0]["box"] if per_face else _median_box(face)
        if per_face:
            info["faces"] = per_face
        return inputs, info
    return inputs


def _median_box(face: np.ndarray) -> list[float]:
    return [round(float(v), 1) for v in np.median(face, axis=0)]


def _face_inputs(frames: np.ndarray, face: np.ndarray, landmarks: np.ndarray | None, sound: torch.Tensor,
                 cfg: PreprocessConfig) -> dict[str, torch.Tensor]:
    """make_inputs' dict for one face of a window (face boxes (T, 4), its landmarks or None)."""
    if cfg.video_input == "landmarks":
        from .landmarks import N_FEATURES, landmark_features

        # no face: zero motion, which the judge reads as "no sync evidence" (face_source says why)
        video = landmark_features(landmarks) if landmarks is not None else torch.zeros(len(frames), N_FEATURES)
    else:
        video = normalise_video(extract_crops(frames, crop_boxes(face, frames.shape[1:3], cfg), cfg), cfg.video_norm)
    return {"video": video.contiguous(), "audio": sound}


def preprocess_clip(src: str | Path | bytes, cfg: PreprocessConfig, return_info: bool = False):
    """load_media + make_inputs for a clip that is one window (a shard's chosen.mp4 / rejected.mp4)."""
    frames, audio = load_media(src, cfg)
    return make_inputs(frames, audio, cfg, return_info=return_info)


def window_starts(duration: float, window: float, hop: float | None = None, min_seconds: float = 1.0) -> list[float]:
    """Start times of windows_for's windows: every `hop` (default: `window`), then a tail window
    ending at the end when at least min(min_seconds, window) is left; [0.0] for a short video."""
    hop = hop or window
    if duration <= window:
        return [0.0]
    starts = [i * hop for i in range(int(math.floor((duration - window) / hop + 1e-9)) + 1)]
    if duration - (starts[-1] + window) >= min(min_seconds, window) - 1e-6:
        starts.append(max(0.0, duration - window))
    return starts


def windows_for(path: str | Path, cfg: PreprocessConfig, hop_seconds: float | None = None,
                min_seconds: float = 1.0, return_info: bool = False, max_faces: int = 1) -> list[tuple]:
    """Cut a video of any length into windows -> [(start_s, end_s, inputs)] (+ info with return_info).

    Windows are cfg.window_seconds long, every hop_seconds (default: window_seconds, no overlap).
    A tail shorter than a window but at least min_seconds long gets one more window ending at the
    end of the video; a video shorter than one window gives a single window, padded (end_s is then
    the video's duration). The picture is decoded ONCE, streamed into one window buffer (perturb.
    media.FrameStream), and each window is processed as soon as its frames have arrived, so memory
    holds one window of frames and ffmpeg decodes the next window while this one is processed; the
    soundtrack (16 kHz float32, 64 kB per second) is decoded once, whole, by the run that probes
    the file (perturb.media.probe_and_decode_audio).
    info: make_inputs' crop info (with its "faces" when max_faces > 1 and a window shows several)
    plus `frames` / `audio_s` decoded before padding, `has_audio` and `display_wh`, the upright
    picture's size in pixels (the frames are decoded at most ANALYSIS_MAX_SIDE a side: a box in
    frame pixels times display_wh / frame_hw[::-1] is in the picture's pixels).
    """
    return windows_for_configs(path, [cfg], hop_seconds, min_seconds, return_info, max_faces)[0]


class _DecodedFrames:
    """Frames decoded beforehand, read like a FrameStream (windows_for_configs)."""

    def __init__(self, frames: np.ndarray) -> None:
        self.frame_shape, self._frames, self._next = frames.shape[1:], frames, 0

    def read_into(self, out: np.ndarray) -> int:
        n = min(len(out), len(self._frames) - self._next)
        out[:n] = self._frames[self._next: self._next + n]
        self._next += n
        return n

    def close(self) -> None:
        pass


def _skip_frames(stream: FrameStream | _DecodedFrames, n: int, scratch: np.ndarray) -> None:
    """Read past the next n frames (into scratch, whose contents are then spent)."""
    while n > 0:
        got = stream.read_into(scratch[:n])
        if not got:
            return
        n -= got


def same_windows_key(cfg: PreprocessConfig) -> tuple[int, int, float]:
    """Configs with the same key cut the same windows from the same decode (windows_for_configs)."""
    return cfg.fps, cfg.sr, float(cfg.window_seconds)


def windows_for_configs(path: str | Path, cfgs: Sequence[PreprocessConfig], hop_seconds: float | None = None,
                        min_seconds: float = 1.0, return_info: bool = False, max_faces: int = 1,
                        ahead: DecodeAhead | None = None) -> list[list[tuple]]:
    """windows_for for several configs at once, one list of windows per config: the video and its
    soundtrack are decoded once for all, and the face is found once per window for the configs that
    find the same one (several judges scoring one file). The configs must share fps, sr and window
    length (same_windows_key). `ahead`: the file's decode started beforehand (perturb.media.DecodeAhead),
    read instead of a new one when it decodes at these settings (else it is closed)."""
    if not cfgs:
        return []
    cfg = cfgs[0]
    if len({same_windows_key(c) for c in cfgs}) > 1:
        raise ValueError("windows_for_configs needs configs with the same fps, sr and window_seconds")
    if ahead is not None and (ahead.path, ahead.sr, ahead.fps, ahead.max_side) != (str(path), cfg.sr, cfg.fps,
                                                                                     ANALYSIS_MAX_SIDE):
        ahead.close()
        ahead = None
    try:
        info, audio = ahead.probed() if ahead is not None else probe_and_decode_audio(path, cfg.sr)
        if not info.has_video:
            raise MediaError(f"no video stream: {path}")
        if info.duration is None and ahead is not None:
            ahead.close()
            ahead = None
    except BaseException:
        if ahead is not None:
            ahead.close()
        raise
    dur = info.duration
    frames_in: FrameStream | _DecodedFrames | DecodeAhead
    if dur is None:  # rare (raw streams): decode everything once to learn the length
        all_frames, audio = load_media(path, cfg)
        dur, frames_in = len(all_frames) / cfg.fps, _DecodedFrames(all_frames)
    else:
        frames_in = ahead if ahead is not None else FrameStream(path, *_analysis_size(info), cfg.fps)
        if audio is None:  # silent: still a valid input
            audio = np.zeros(int(round(dur * cfg.sr)), dtype=np.float32)
    win = cfg.window_seconds
    starts = window_starts(dur, win, hop_seconds, min_seconds)
    out: list[list[tuple]] = [[] for _ in cfgs]
    # one window's frames, reused for every window (make_inputs keeps no view of them): ffmpeg's pipe
    # writes each frame where the judge reads it, with no copy in between
    buf = np.empty((cfg.n_frames, *frames_in.frame_shape), np.uint8)
    held_from, held = 0, 0   # buf[:held] holds frames held_from, held_from + 1, ...
    try:
        for s in starts:
            a = int(round(s * cfg.fps))  # the window's first frame (a start between two frames: the nearer one)
            drop = max(0, a - held_from)    # frames before this window are not needed again
            if drop >= held:
                _skip_frames(frames_in, drop - held, buf)   # windows further apart than their length
                held = 0
            elif drop:
                buf[: held - drop] = buf[drop:held]        # overlapping windows: shared frames move up
                held -= drop
            held_from = max(held_from, a)
            held += frames_in.read_into(buf[held:])    # fewer: the picture ends here; fit_window pads
            if not held:
                raise MediaError(f"no frames decoded at {s:.2f} s of {path}")
            frames = buf[:held]
            wav = audio[int(round(s * cfg.sr)): int(round((s + win) * cfg.sr))]
            faces: dict[str, tuple] = {}
            for c, windows in zip(cfgs, out):
                inputs, crop_info = make_inputs(frames, wav, c, return_info=True, faces=faces, max_faces=max_faces)
                window = (round(s, 3), round(min(s + win, dur), 3), inputs)
                if return_info:
                    window += (dict(crop_info, frames=len(frames), audio_s=round(len(wav) / cfg.sr, 3),
                                    has_audio=bool(info.has_audio), display_wh=[info.width, info.height]),)
                windows.append(window)
    finally:
        frames_in.close()  # stops ffmpeg when a window fails half way
    return out
