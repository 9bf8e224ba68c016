"""Tiny lip-sync preference shards for train/ tests (and quick local experiments).

Each source is a synthetic talking head: a coloured face disc on a coloured background with a dark
mouth ellipse whose opening follows the envelope of a speech-like soundtrack (harmonic "voiced"
syllables of 80-300 ms separated by short gaps and occasional pauses). A pair is
  chosen   = the window as is (in sync, severity 0),
  rejected = same picture, soundtrack shifted by 200-600 ms (either direction),
written in the shard format of perturb/ (WebDataset tars `<split>-000000.tar` with chosen.mp4,
rejected.mp4, json; plus card.json and manifest.json).

    python -m tests.train_fixtures /tmp/fixture_shards --sources 8 --seconds 5
"""
from __future__ import annotations

import hashlib
import io
import json
import tempfile
from pathlib import Path

import numpy as np

from perturb.media import CANONICAL_FPS, CANONICAL_SR, encode_clip, mux_new_audio

MARGIN_S = 0.8  # audio generated beyond the window on both sides, so shifts bring in real sound


def speech_like(rng: np.random.Generator, seconds: float, sr: int = CANONICAL_SR) -> tuple[np.ndarray, np.ndarray]:
    """(audio float32, envelope float32) of `seconds` of syllable-like voiced sound with pauses."""
    n = int(round(seconds * sr))
    env = np.zeros(n, dtype=np.float32)
    t = rng.uniform(0.0, 0.2)
    while t < seconds:
        dur = rng.uniform(0.08, 0.3)
        a, b = int(t * sr), min(n, int((t + dur) * sr))
        if b > a:
            env[a:b] = rng.uniform(0.4, 1.0) * np.hanning(b - a + 2)[1:-1]
        gap = rng.uniform(0.3, 0.7) if rng.random() < 0.2 else rng.uniform(0.03, 0.15)
        t += dur + gap
    tt = np.arange(n) / sr
    f0 = rng.uniform(100, 220) * (1 + 0.05 * np.sin(2 * np.pi * rng.uniform(2, 5) * tt))
    phase = 2 * np.pi * np.cumsum(f0) / sr
    voiced = sum(np.sin(k * phase) / k for k in range(1, 9))
    audio = env * (voiced / 2.5 + 0.15 * rng.standard_normal(n)) + 0.003 * rng.standard_normal(n)
    return audio.astype(np.float32), env


def draw_face(env_frames: np.ndarray, rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """uint8 (T, size, size, 3): the face; the mouth opening follows env_frames (0..1)."""
    import cv2

    bg = rng.integers(0, 255, 3)
    skin = rng.integers(90, 255, 3)
    cx = size / 2 + rng.uniform(-2, 2)
    cy = size * 0.45 + rng.uniform(-2, 2)
    r = size * rng.uniform(0.3, 0.36)
    mouth_y = cy + 0.52 * r  # lower part of the face
    mouth_w = r * rng.uniform(0.35, 0.5)
    frames = np.empty((len(env_frames), size, size, 3), dtype=np.uint8)
    base = np.empty((size, size, 3), dtype=np.uint8)
    base[:] = bg
    cv2.circle(base, (int(cx), int(cy)), int(r), [int(v) for v in skin], -1, cv2.LINE_AA)
    eye = [int(v) for v in (skin * 0.3)]
    for dx in (-0.4, 0.4):
        cv2.circle(base, (int(cx + dx * r), int(cy - 0.25 * r)), max(1, int(r * 0.1)), eye, -1, cv2.LINE_AA)
    for i, e in enumerate(env_frames):
        f = base.copy()
        open_h = 1 + e * r * 0.25
        cv2.ellipse(f, ((cx, mouth_y), (2 * mouth_w, 2 * open_h), 0), (30, 10, 20), -1, cv2.LINE_AA)
        noise = rng.normal(0, 3, f.shape)
        frames[i] = np.clip(f + noise, 0, 255).astype(np.uint8)
    return frames


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_fixture_shards(out: str | Path, sources: int = 6, seconds: float = 2.0, pairs_per_window: int = 1,
                         windows_per_source: int = 1, size: int = 64, seed: int = 0,
                         splits: dict[str, float] | None = None, offsets_ms: tuple[float, float] = (200, 600)) -> Path:
    """Write tiny lip-sync shards to `out` and return it. Sources are split by source id."""
    import webdataset as wds

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    splits = splits or {"train": 0.67, "val": 0.33}
    names = list(splits)
    n_per = [max(1, int(round(splits[k] / sum(splits.values()) * sources))) for k in names]
    n_per[0] = max(1, sources - sum(n_per[1:]))  # the first split (train) takes the rest
    split_of = [k for k, n in zip(names, n_per) for _ in range(n)][:sources]
    fps, sr = CANONICAL_FPS, CANONICAL_SR
    writers, counts = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for s in range(sources):
            split = split_of[s]
            if split not in writers:
                writers[split] = wds.TarWriter(str(out / f"{split}-000000.tar"))
                counts[split] = 0
            total = seconds * windows_per_source + 2 * MARGIN_S
            audio, env = speech_like(rng, total, sr)
            n_frames_total = int(total * fps)
            spf = sr // fps
            env_frames = env[: n_frames_total * spf].reshape(n_frames_total, spf).mean(axis=1)
            env_frames = env_frames / max(env_frames.max(), 1e-6)
            frames_all = draw_face(env_frames, rng, size)
            for w in range(windows_per_source):
                start = MARGIN_S + w * seconds
                f0, nf = int(round(start * fps)), int(round(seconds * fps))
                a0, na = int(round(start * sr)), int(round(seconds * sr))
                chosen_path = tmp / f"s{s}_w{w}_chosen.mp4"
                encode_clip(frames_all[f0:f0 + nf], audio[a0:a0 + na], chosen_path)
                chosen = chosen_path.read_bytes()
                for p in range(pairs_per_window):
                    off = float(rng.uniform(*offsets_ms)) * (1 if rng.random() < 0.5 else -1)
                    sh = int(round(off / 1000 * sr))
                    rej_path = tmp / f"s{s}_w{w}_p{p}_rej.mp4"
                    mux_new_audio(chosen_path, audio[a0 + sh:a0 + sh + na], rej_path)
                    severity = int(np.clip(1 + abs(off) // 200, 1, 5))
                    meta = {
                        "dim": "lip_sync", "recipe": "lip_sync_fixture",
                        "question": "Is the speech in sync with the lips?",
                        "source_id": f"fixture{s:03d}", "split": split,
                        "window": [round(start, 3), round(start + seconds, 3)], "seed": seed,
                        "kind": "original_vs_perturbed", "severity": severity, "chosen_severity": 0,
                        "ops": [{"name": "audio_shift", "params": {"offset_ms": round(off, 1)}}],
                        "chosen_ops": [], "operator": "audio_shift", "defect": round(abs(off), 1),
                        "chosen_defect": 0.0, "margin": float(severity),
                        "canonical": {"fps": fps, "sr": sr},
                    }
                    writers[split].write({"__key__": f"fixture{s:03d}_w{w:02d}_p{p}", "chosen.mp4": chosen,
                                          "rejected.mp4": rej_path.read_bytes(), "json": meta})
                    counts[split] += 1
    for wr in writers.values():
        wr.close()
    shards = [{"file": f"{k}-000000.tar", "sha256": _sha256(out / f"{k}-000000.tar"), "split": k,
               "count": counts[k]} for k in sorted(writers)]
    (out / "manifest.json").write_text(json.dumps({"shards": shards}, indent=2))
    (out / "card.json").write_text(json.dumps({
        "dim": "lip_sync", "recipe": "lip_sync_fixture", "synthetic": True, "sources": sources,
        "seconds": seconds, "pairs": counts, "offsets_ms": list(offsets_ms), "seed": seed}, indent=2))
    return out


def write_fixture_videos(out: str | Path, sources: int = 3, seconds: float = 3.0, size: int = 64,
                         seed: int = 0) -> list[Path]:
    """Untouched synthetic talking-head videos (picture and sound in sync), `fixture_NNN.mp4`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    fps, sr = CANONICAL_FPS, CANONICAL_SR
    paths = []
    for s in range(sources):
        audio, env = speech_like(rng, seconds, sr)
        n = int(seconds * fps)
        env_frames = env[: n * (sr // fps)].reshape(n, sr // fps).mean(axis=1)
        frames = draw_face(env_frames / max(env_frames.max(), 1e-6), rng, size)
        path = out / f"fixture_{s:03d}.mp4"
        encode_clip(frames, audio[: int(seconds * sr)], path)
        paths.append(path)
    return paths


# A judge small enough to train a few steps in seconds on the fixture shards (2 s windows).
TINY_PREPROCESS = dict(window_seconds=2.0, crop_size=[24, 36], n_mels=32, detect_frames=3)
TINY_MODEL = dict(vis_widths=[8, 16], aud_widths=[24, 24], emb_dim=24, max_offset_frames=8, n_segments=2,
                  head_hidden=32, use_pooled=False)


def write_tiny_config(path: str | Path, **train) -> Path:
    """A `python -m train --config` YAML for the tiny judge; `train` entries override the train section."""
    import yaml

    from train.preprocess import PreprocessConfig

    conf = {"dim": "lip_sync", "question": "Is the speech in sync with the lips?",
            "preprocess": PreprocessConfig(**TINY_PREPROCESS).to_dict(), "model": TINY_MODEL,
            "train": {"batch_size": 4, "learning_rate": 3e-3, "save_steps": 2, "eval_steps": 3,
                      "logging_steps": 2, "disable_tqdm": True, **train},
            "objectives": {"reward": {"margin_scale": 0.1}}}
    Path(path).write_text(yaml.safe_dump(conf))
    return Path(path)


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--sources", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--windows", type=int, default=1)
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    print(write_fixture_shards(a.out, a.sources, a.seconds, a.pairs, a.windows, a.size, a.seed))
