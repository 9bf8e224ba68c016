"""The unit operators work on: one window of a talking video, frames + audio + where it came from."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .media import CANONICAL_FPS, CANONICAL_SR, decode_frames


@dataclass(frozen=True)
class Clip:
    """A window of video with its soundtrack.

    audio: float32 mono, shape (n,), at `sr`.
    frames: uint8 RGB, shape (T, H, W, 3) at `fps`, or None until decoded (lazily, `load_frames`).
    video_path: set while the picture is still the untouched stream of that file; `with_frames`
      clears it. Keeping it while only the audio changes is what lets the writer stream-copy the
      video instead of re-encoding it.
    meta: source metadata (source_id, window, probe facts...), carried along, never interpreted.
    context_before / context_after: the source's soundtrack just before / after the window (float32,
      possibly empty). Timing operators read from it, so a shifted window is filled with the speech
      that really surrounds it instead of silence: a silent gap is a cue real desynced videos do not
      have, and a judge trained on it would learn the gap, not the desync. Only the window is written.
    """

    audio: np.ndarray
    sr: int = CANONICAL_SR
    fps: float = CANONICAL_FPS
    frames: np.ndarray | None = None
    video_path: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    context_before: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    context_after: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))

    @property
    def duration(self) -> float:
        return len(self.audio) / self.sr

    @property
    def video_untouched(self) -> bool:
        """True when the picture is still the original stream (stream copy is allowed)."""
        return self.video_path is not None

    def load_frames(self) -> np.ndarray:
        """The frames, decoding the untouched video stream if needed."""
        if self.frames is not None:
            return self.frames
        if self.video_path is None:
            raise ValueError("clip has neither frames nor a video stream")
        return decode_frames(self.video_path)

    def with_audio(self, audio: np.ndarray) -> "Clip":
        """Same picture, new soundtrack (video stays stream-copyable).

        The audio context is dropped: it no longer continues the new soundtrack (a later timing
        operator then pads with silence, as without context).
        """
        empty = np.zeros(0, np.float32)
        return replace(self, audio=np.asarray(audio, dtype=np.float32), context_before=empty, context_after=empty)

    def extended_audio(self) -> np.ndarray:
        """context_before + audio + context_after (the window starts at len(context_before))."""
        return np.concatenate([self.context_before, self.audio, self.context_after]).astype(np.float32)

    def with_extended_audio(self, extended: np.ndarray) -> "Clip":
        """Inverse of extended_audio for a same-length signal: new window audio and context."""
        a, n = len(self.context_before), len(self.audio)
        extended = np.asarray(extended, dtype=np.float32)
        return replace(self, audio=extended[a:a + n].copy(), context_before=extended[:a].copy(),
                       context_after=extended[a + n:].copy())

    def with_frames(self, frames: np.ndarray) -> "Clip":
        """Same soundtrack, new picture (the writer must encode it)."""
        return replace(self, frames=np.asarray(frames, dtype=np.uint8), video_path=None)

    @classmethod
    def from_file(cls, path: str | Path, meta: dict[str, Any] | None = None,
                  decode_video: bool = False) -> "Clip":
        """A canonical window file (25 fps, 16 kHz) as a Clip; frames stay lazy unless asked for."""
        from .media import decode_audio

        audio = decode_audio(path)
        frames = decode_frames(path) if decode_video else None
        return cls(audio=audio, frames=frames, video_path=str(path), meta=dict(meta or {}))
