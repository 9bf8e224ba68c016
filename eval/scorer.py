"""Scorer: an exported judge as a calibrated scorer of whole videos, and a differentiable reward.

Usage (two lines):

    from eval import Scorer
    Scorer.from_pretrained("exports/lip_sync").score("video.mp4")   # -> P(yes) in [0, 1]

An export folder (written by `python -m eval evaluate`) holds model.safetensors + config.json
(AVJudge.save_pretrained), preprocessing.json (train.preprocess.PreprocessConfig), calibration.json
(eval.calibration) and metrics.json (dim, question, test metrics). from_pretrained builds a plain
AVJudge export on plain torch, its safetensors read directly (train/judge_core.py: no transformers
import, the same weights); any other judge loads through transformers (train.model.load_weights).

Long videos: a video of any length, container and rate that ffmpeg reads is cut into the windows
train.preprocess.windows_for returns; each window gets a decision logit z and its sync profile (the
offset evidence c_k, k = -K..K). The clip's decision reads the evidence of all its windows: their
profiles are averaged (evidence adds up before the decision, so one clear window is not drowned by
quiet ones) and the judge's head decides on the mean profile; judges whose head also reads pooled
embeddings average the window logits instead. Either way the clip logit is then calibrated.
`score_windows` gives the calibrated probability of each window.

Offset: the mean profile's peak is the estimated audio offset (`offset["ms"]`, positive = the audio
lags the picture, in whole frames: a multiple of 1000 / fps ms, within +-max_offset_frames frames)
and its height above the profile's median is the confidence (`offset["confidence"]`, in cosine
units, as SyncNet's "AV offset / confidence"; 0 for a flat profile). Only judges that estimate timing
give one (`Scorer.estimates_timing`): a judge that sees the picture and whose profile is trained to
peak at the true offset (sync loss) or whose decision reads the profile alone. `offset_ms` and
`offset_confidence` repeat the two numbers under their earlier names.

Field names: `score_file` returns one judge's part of the JSON record `python -m eval score` prints,
under the same names: `score` (the record's `scores[dim]`), `status`, `offset` ({"ms", "confidence"}),
`windows`; plus `logit`, the clip's decision logit before calibration.

Several faces: judges that look at a face (`looks_at_faces`) track up to `max_faces` faces per window
(windows_for with max_faces: train/landmarks.face_landmarks_multi, train/preprocess.find_face_tracks).
Each face of a window is judged; the window's speaking face is the best-synced one (the highest
profile peak above its median, the offset confidence, for a judge that estimates timing; else the
highest logit), and the clip's decision, offset and window scores read the speaking faces' evidence.
The windows' faces are linked into the clip's faces by where they are, and `score_file` reports each:
`faces` [{"box" (x0, y0, x1, y1 in pixels of the upright picture), "score", "offset_ms", "confidence",
"frames"}]. A window with one face is prepared as with one-face tracking, so a one-face clip gives
the one-face record plus its single face.

Status: every file gets one -- `ok`, or why the judge cannot judge it: `no_audio` (no audio
stream), `too_short` (under MIN_SECONDS of picture or sound), `no_face` (no face found in any
window; the crop fell back to a fixed framing). A score is still given; `python -m eval filter`
drops files that are not `ok` unless told to keep them.

`reward(video, audio)` takes preprocessed tensors (what train.preprocess.make_inputs returns, with
or without a batch dimension) and returns calibrated probabilities (B,) that are differentiable
w.r.t. both inputs, for RLHF. Temperature and Platt calibration are applied exactly (torch ops);
an isotonic calibration is piecewise constant in places (zero gradient), so `reward` uses the
temperature fit that is stored with it (calibration.json params.fallback) instead; `score` always
uses the exported calibration itself.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from .calibration import Calibrator, IdentityCalibration, load_calibrator, read_json


# unbatched ranks of train.preprocess.make_inputs: video (T, C, H, W), audio (n_mels, R*T)
VIDEO_NDIM, AUDIO_NDIM = 4, 2
MIN_SECONDS = 0.5  # less picture or sound than this is too little to judge (status too_short)
MAX_FACES = 4      # faces tracked per window by default (Scorer(max_faces=...), --max-faces)


# Judges that ship inside the package (trained by `make real`, each with its model card)
PACKAGED_JUDGES = Path(__file__).resolve().parent / "judges"


def packaged_judges() -> list[str]:
    """Names of the judges shipped in the package (`Scorer.from_pretrained(name)`, `--scorer name`)."""
    return sorted(p.name for p in PACKAGED_JUDGES.iterdir() if (p / "config.json").is_file()) \
        if PACKAGED_JUDGES.is_dir() else []


def resolve_export(name_or_path: str | Path) -> Path:
    """An export folder: `name_or_path` itself when it exists or looks like a path, else the packaged
    judge of that name; FileNotFoundError naming both and the packaged judges otherwise."""
    path = Path(name_or_path)
    if path.exists() or len(path.parts) > 1:
        return path
    if (PACKAGED_JUDGES / path.name / "config.json").is_file():
        return PACKAGED_JUDGES / path.name
    raise FileNotFoundError(f"no export folder {path} and no packaged judge of that name (packaged: "
                            f"{', '.join(packaged_judges()) or 'none'})")


def trained_on_demo_corpus(card: dict[str, Any] | None) -> bool:
    """Whether a data card is a build of the synthetic demo corpus (`perturb build --demo`)."""
    if not isinstance(card, dict):
        return False
    return Path(str(card.get("src") or "")).name == "demo_corpus" or "--demo" in str(card.get("command") or "").split()


def _json_object(path: Path) -> dict[str, Any]:
    """A JSON object file of an export (calibration.read_json: size cap, nesting), else a ValueError."""
    d = read_json(path)
    if not isinstance(d, dict):
        raise ValueError(f"{path}: must hold a JSON object, got {type(d).__name__}")
    return d


def _info(window: tuple) -> dict[str, Any]:
    return window[3] if len(window) > 3 else {}


def _picture_scale(info: dict[str, Any]) -> list[float]:
    """[x, y] factors from the decoded frames' pixels to the upright picture's (windows_for info)."""
    h, w = info.get("frame_hw") or (0, 0)
    dw, dh = info.get("display_wh") or (None, None)
    return [dw / w, dh / h] if w and h and dw and dh else [1.0, 1.0]


def _peak_height(profile: np.ndarray) -> float:
    """How far a sync profile's peak stands above its median: the offset confidence."""
    return float(profile.max() - np.median(profile))


def _stack_inputs(items: Sequence[dict[str, Any]]):
    """Batch a list of unbatched make_inputs() dicts into {"video": (B,...), "audio": (B,...)}."""
    import torch

    return {k: torch.stack([torch.as_tensor(it[k]) for it in items]) for k in ("video", "audio")}


class Scorer:
    """A judge + its preprocessing + its calibration. Build with `Scorer.from_pretrained(dir)`."""

    def __init__(self, model, preprocess_cfg, calibrator: Calibrator | None = None,
                 dim: str | None = None, question: str | None = None, batch_size: int = 8,
                 device: str = "cpu", path: str | None = None, data_card: dict[str, Any] | None = None,
                 max_faces: int = MAX_FACES) -> None:
        if int(max_faces) < 1:
            raise ValueError(f"max_faces must be at least 1, got {max_faces}")
        self.model = model.eval()
        self.cfg = preprocess_cfg
        self.calibrator = calibrator or IdentityCalibration()
        self.dim = dim or "judge"
        self.question = question
        self.batch_size = int(batch_size)
        self.device = device
        self.path = path
        self.data_card = data_card  # what the judge was trained on (metrics.json "data_card")
        self.max_faces = int(max_faces)  # faces tracked per window (module docstring, "Several faces")

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | None = None, batch_size: int = 8,
                        calibration: str | Path | dict | None = None,
                        plugins: list[str] | None = None, max_faces: int = MAX_FACES) -> "Scorer":
        """Load an export folder. `calibration` overrides calibration.json (a path or a dict);
        `plugins`: modules to import first (judges whose encoders are not part of avbench);
        `max_faces`: faces tracked per window (1: the one-face tracking of training)."""
        from train.encoders import import_plugins
        from train.judge_core import load_plain
        from train.preprocess import PreprocessConfig

        import_plugins(plugins)  # first, as load_weights does: a plugin may register preprocessing too
        path = resolve_export(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"not an exported judge (no config.json): {path}")
        device = device or "cpu"
        # an export is untrusted input: its JSON files are read with a size cap and checked here, each
        # fault one ValueError naming the file, before any weight is loaded
        _json_object(path / "config.json")
        pre_file = path / "preprocessing.json"
        if not pre_file.is_file():
            raise FileNotFoundError(f"not an exported judge (no preprocessing.json): {path}")
        try:
            cfg = PreprocessConfig.from_dict(_json_object(pre_file))
        except (TypeError, ValueError) as err:
            raise ValueError(str(err) if str(err).startswith(str(pre_file)) else f"{pre_file}: {err}") from None
        if calibration is not None:
            cal = load_calibrator(calibration)
        elif (path / "calibration.json").is_file():
            cal = load_calibrator(path / "calibration.json")
        else:
            cal = IdentityCalibration()
        meta: dict[str, Any] = {}
        if (path / "metrics.json").is_file():
            meta = _json_object(path / "metrics.json")
            for key in ("dim", "question"):
                if meta.get(key) is not None and not isinstance(meta[key], str):
                    raise ValueError(f"{path / 'metrics.json'}: {key} must be a string, got {meta[key]!r}")
        # a plain AVJudge export loads without transformers, whose import costs more than scoring a
        # short clip; any other judge (or a fault to report) goes through transformers' loader
        model = load_plain(path, device)
        if model is None:
            from train.model import load_weights

            model = load_weights(path, device, plugins)
        dim = meta.get("dim") or getattr(model.config, "dim", None) or path.name
        question = meta.get("question") or getattr(model.config, "question", None)
        card = meta.get("data_card")
        return cls(model, cfg, cal, dim=dim, question=question, batch_size=batch_size,
                   device=device, path=str(path), data_card=card if isinstance(card, dict) else None,
                   max_faces=max_faces)

    @property
    def trained_on_demo_corpus(self) -> bool:
        """Whether the judge learnt from the synthetic demo corpus (`make demo`): a pipeline check."""
        return trained_on_demo_corpus(self.data_card)

    def from_training_data(self, path: str | Path) -> bool:
        """Whether `path` is one of the judge's training sources or a clip cut from them: under the
        card's source folder, or named after one of its sources (`perturb samples` names clips so)."""
        card = self.data_card or {}
        p = Path(path)
        src = card.get("src")
        if src and p.resolve().is_relative_to(Path(src).resolve()):
            return True
        ids = {str(s.get("source_id")) for s in card.get("sources") or [] if isinstance(s, dict)}
        return any(p.stem == i or p.name.startswith(f"{i}__") for i in ids)

    # ------------------------------------------------------------------ logits
    def outputs(self, inputs: Sequence[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray | None]:
        """(decision logits z (N,), sync profiles (N, S, 2K+1) or None) of unbatched input dicts, no grad."""
        import torch

        ready = self.__dict__.get("_ready")
        if ready and inputs and all(id(d) in ready for d in inputs):  # run already by precompute
            z, prof = zip(*(ready[id(d)] for d in inputs))
            return np.array(z, dtype=np.float64), (None if prof[0] is None else np.stack(prof))
        zs, profs = [], []
        with torch.no_grad():
            for i in range(0, len(inputs), self.batch_size):
                batch = _stack_inputs(inputs[i: i + self.batch_size])
                out = self.model(video=batch["video"].to(self.device), audio=batch["audio"].to(self.device))
                zs.append(out.decision.detach().float().cpu().numpy().reshape(-1))
                if getattr(out, "profile", None) is not None:
                    profs.append(out.profile.detach().float().cpu().numpy())
        z = np.concatenate(zs).astype(np.float64) if zs else np.zeros(0)
        return z, (np.concatenate(profs) if profs and len(profs) == len(zs) else None)

    def precompute(self, inputs: Sequence[dict[str, Any]]) -> None:
        """Run the judge now on many input dicts, e.g. the windows of several files in one GPU batch;
        until the next call, outputs() of any of these same dicts reads the results from here
        (precompute([]) forgets them). The dicts must stay alive meanwhile: they are known by id."""
        self._ready: dict[int, tuple[float, np.ndarray | None]] = {}
        if inputs:
            z, prof = self.outputs(inputs)
            self._ready = {id(d): (z[i], None if prof is None else prof[i]) for i, d in enumerate(inputs)}

    def logits(self, inputs: Sequence[dict[str, Any]]) -> np.ndarray:
        """Decision logits z (float64 array) of unbatched input dicts, in batches, no grad."""
        return self.outputs(inputs)[0]

    def windows(self, path: str | Path) -> list[tuple[float, float, dict[str, Any], dict[str, Any]]]:
        """[(start, end, inputs, info)] of the video (train.preprocess.windows_for)."""
        from train.preprocess import windows_for

        wins = windows_for(str(path), self.cfg, return_info=True, max_faces=self.max_faces)
        if not wins:
            raise ValueError(f"no window could be cut from {path}")
        return wins

    def window_logits(self, path: str | Path, windows=None) -> list[tuple[float, float, float]]:
        """[(start, end, z)] for each window of the video."""
        wins = windows if windows is not None else self.windows(path)
        z = self.logits([w[2] for w in wins])
        return [(float(s), float(e), float(v)) for (s, e, *_), v in zip(wins, z)]

    def calibrate(self, z) -> np.ndarray:
        return self.calibrator.transform(np.asarray(z, dtype=np.float64).reshape(-1))

    def status(self, windows) -> str:
        """Whether the judge can judge the file: ok | no_audio | too_short | no_face (module docstring)."""
        infos = [w[3] for w in windows if len(w) > 3]
        if not infos:
            return "ok"
        if not infos[0].get("has_audio", True):
            return "no_audio"
        seconds = min(sum(i.get("frames", 0) for i in infos) / self.cfg.fps, sum(i.get("audio_s", 0) for i in infos))
        if seconds < MIN_SECONDS:
            return "too_short"
        if self.cfg.crop != "full" or self.cfg.video_input != "crop":
            if not any(i.get("detected", 0) > 0 for i in infos):  # every window fell back to a fixed framing
                return "no_face"
        return "ok"

    # ------------------------------------------------------------------ scores
    @property
    def estimates_timing(self) -> bool:
        """Whether the judge's offset estimate means something (module docstring): it sees the picture,
        and its sync profile is trained to peak at the true offset or is all its decision reads."""
        cfg = getattr(self.model, "config", None)
        if not getattr(getattr(self.model, "video_encoder", None), "sees_picture", True):
            return False  # audio only (audio_quality): no audio-video offset
        return float(getattr(cfg, "sync_aux_weight", 0.0) or 0.0) > 0 or not getattr(cfg, "use_pooled", True)

    def score_file(self, path: str | Path, windows=None) -> dict[str, Any]:
        """{"score", "logit", "status", "offset": {"ms", "confidence"}, "windows": [{"start", "end",
        "score"}], "faces": [...]} for one video (one decode); "offset" (and its aliases "offset_ms",
        "offset_confidence") only for a judge that estimates timing; "faces" only for a judge that
        looks at a face (module docstring, "Several faces")."""
        wins = windows if windows is not None else self.windows(path)
        z, prof = self.outputs([w[2] for w in wins])
        rec: dict[str, Any] = {"status": self.status(wins)}
        per_window, z, prof, speaking = self._window_faces(wins, z, prof)
        clip_z, offset = self._clip_evidence(z, prof)
        if offset is not None:
            rec["offset"] = offset
            rec["offset_ms"], rec["offset_confidence"] = rec["offset"]["ms"], rec["offset"]["confidence"]
        rec.update(score=float(self.calibrate([clip_z])[0]), logit=clip_z,
                   windows=[{"start": float(w[0]), "end": float(w[1]), "score": float(p)}
                            for w, p in zip(wins, self.calibrate(z))])
        if self.looks_at_faces:
            tracks = self._face_tracks(per_window)
            rec["faces"] = [self._face_record(tr) for tr in tracks]
            if len(tracks) > 1:  # which face spoke in each window (an index into "faces")
                where = {(wi, id(c)): k for k, tr in enumerate(tracks) for wi, c in tr}
                for wi, w in enumerate(rec["windows"]):
                    c = speaking[wi]
                    if c is not None and (wi, id(c)) in where:
                        w["face"] = where[(wi, id(c))]
        return rec

    # ------------------------------------------------------------------ faces
    @property
    def looks_at_faces(self) -> bool:
        """Whether the judge's input comes from a face it finds (not the whole frame, nor audio alone)."""
        if not getattr(getattr(self.model, "video_encoder", None), "sees_picture", True):
            return False
        return self.cfg.crop != "full" or self.cfg.video_input != "crop"

    def _clip_evidence(self, z: np.ndarray, prof: np.ndarray | None) -> tuple[float, dict[str, float] | None]:
        """(decision logit, offset {"ms", "confidence"} or None) of windows' logits and profiles:
        the head decides on the mean profile (or the logits are averaged, module docstring)."""
        clip_z = float(z.mean())
        if prof is None:
            return clip_z, None
        mean_prof = prof.mean(axis=0)                      # (S, 2K+1): the clip's offset evidence
        decide = getattr(self.model, "decision_from_profile", None)
        if decide is not None:
            import torch

            with torch.no_grad():
                d = decide(torch.as_tensor(mean_prof, dtype=torch.float32, device=self.device)[None])
            if d is not None:
                clip_z = float(d.float().cpu()[0])
        if not self.estimates_timing:
            return clip_z, None
        whole = mean_prof[0]
        k_max = (len(whole) - 1) // 2
        return clip_z, {"ms": float((int(np.argmax(whole)) - k_max) * 1000.0 / self.cfg.fps),
                        "confidence": _peak_height(whole)}

    def _window_faces(self, wins, z: np.ndarray, prof: np.ndarray | None):
        """(faces of each window [{"box", "frames", "z", "prof"}], z and prof with each window's own
        being its speaking face's, the speaking face of each window or None).

        A window with several faces (its info "faces", windows_for with max_faces) has each judged;
        its speaking face is the best-synced one: the highest sync profile peak (the offset
        confidence) for a judge that estimates timing, else the highest decision logit."""
        extra = [(wi, f) for wi, w in enumerate(wins) for f in (_info(w).get("faces") or [])[1:self.max_faces]]
        ez, eprof = self.outputs([f["inputs"] for _, f in extra]) if extra else (np.zeros(0), None)
        judged = {id(f): (ez[j], None if eprof is None else eprof[j]) for j, (_, f) in enumerate(extra)}
        z = z.copy()
        prof = None if prof is None else prof.copy()
        per_window: list[list[dict[str, Any]]] = []
        speaking: list[dict[str, Any] | None] = []
        timing = prof is not None and self.estimates_timing
        for wi, w in enumerate(wins):
            info = _info(w)
            scale = _picture_scale(info)
            own = (z[wi], None if prof is None else prof[wi])
            faces = [{"box": f["box"], "frames": f["frames"], "z": zp[0], "prof": zp[1]}
                     for f, zp in ((f, own if k == 0 else judged[id(f)])
                                   for k, f in enumerate((info.get("faces") or [])[:self.max_faces]))]
            if not faces and info.get("face_box") is not None:  # one face: the window's own inputs
                faces = [{"box": info["face_box"], "frames": info.get("face_frames", 0), "z": own[0], "prof": own[1]}]
            for f in faces:
                f["box"] = [round(v * s, 1) for v, s in zip(f["box"], scale * 2)]
                f["frames"] = int(min(f["frames"], info.get("frames", f["frames"])))  # not the window's padding
            best = max(faces, key=lambda f: _peak_height(f["prof"][0]) if timing else f["z"], default=None)
            if best is not None and len(faces) > 1:
                z[wi] = best["z"]
                if prof is not None:
                    prof[wi] = best["prof"]
            per_window.append(faces)
            speaking.append(best)
        return per_window, z, prof, speaking

    def _face_tracks(self, per_window: list[list[dict[str, Any]]]) -> list[list[tuple[int, dict[str, Any]]]]:
        """The windows' faces joined into the clip's faces [[(window, face)]]: a face continues the one
        whose box in an earlier window holds its centre (the latest such), else starts one. At most
        max_faces, the most tracked first."""
        tracks: list[list[tuple[int, dict[str, Any]]]] = []
        for wi, faces in enumerate(per_window):
            taken: set[int] = set()
            for f in faces:
                cx, cy = (f["box"][0] + f["box"][2]) / 2, (f["box"][1] + f["box"][3]) / 2
                match = [k for k, tr in enumerate(tracks) if k not in taken and tr[-1][0] < wi
                         and tr[-1][1]["box"][0] <= cx <= tr[-1][1]["box"][2]
                         and tr[-1][1]["box"][1] <= cy <= tr[-1][1]["box"][3]]
                if match:
                    k = max(match, key=lambda k: tracks[k][-1][0])
                    tracks[k].append((wi, f))
                else:
                    tracks.append([(wi, f)])
                    k = len(tracks) - 1
                taken.add(k)
        frames = [sum(f["frames"] for _, f in tr) for tr in tracks]
        order = sorted(range(len(tracks)), key=lambda k: -frames[k])[:self.max_faces]
        return [tracks[k] for k in order]

    def _face_record(self, track: list[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
        """{"box", "score", "offset_ms", "confidence", "frames"} of one face over its windows."""
        z = np.array([f["z"] for _, f in track], dtype=np.float64)
        profs = [f["prof"] for _, f in track]
        face_z, offset = self._clip_evidence(z, None if profs[0] is None else np.stack(profs))
        return {"box": [round(float(v), 1) for v in np.median([f["box"] for _, f in track], axis=0)],
                "score": float(self.calibrate([face_z])[0]),
                "offset_ms": None if offset is None else offset["ms"],
                "confidence": None if offset is None else offset["confidence"],
                "frames": int(sum(f["frames"] for _, f in track))}

    def score(self, path: str | Path) -> float:
        """Calibrated P(yes) of a whole video (the clip decision on its windows' evidence)."""
        return self.score_file(path)["score"]

    def score_windows(self, path: str | Path) -> list[dict[str, float]]:
        """Calibrated P(yes) of each window: [{"start", "end", "score"}]."""
        return self.score_file(path)["windows"]

    def score_batch(self, paths: Iterable[str | Path], errors: str = "raise") -> list[float]:
        """Scores of several videos; errors="nan" gives nan for a file that cannot be read."""
        out = []
        for p in paths:
            try:
                out.append(self.score(p))
            except Exception:
                if errors != "nan":
                    raise
                out.append(float("nan"))
        return out

    # ------------------------------------------------------------------ reward
    def reward(self, video, audio):
        """Calibrated P(yes) as a differentiable tensor (B,) of preprocessed inputs.

        Accepts make_inputs() tensors with or without the batch dimension. Gradients flow to
        `video` and `audio` (model in eval mode; parameters are not frozen here, freeze them
        yourself if the judge must stay fixed).
        """
        import torch

        video = torch.as_tensor(video)
        audio = torch.as_tensor(audio)
        if video.dim() == VIDEO_NDIM:  # one clip (T, C, H, W) -> (1, T, C, H, W)
            video = video.unsqueeze(0)
        if audio.dim() == AUDIO_NDIM:  # one clip (n_mels, frames) -> (1, n_mels, frames)
            audio = audio.unsqueeze(0)
        z = self.model.decision_logit(video.to(self.device), audio.to(self.device))
        return self.calibrator.differentiable().torch_transform(z.reshape(-1))

    def __repr__(self) -> str:
        return f"Scorer(dim={self.dim!r}, calibration={self.calibrator.method!r}, path={self.path!r})"
