"""The operator contract: refused at registration when broken, checked for every registered operator.

The generic checks run on every entry of REGISTRY (as albumentations tests all its transforms):
registering an operator is all it takes to have its keywords, JSON params, purity, replay,
defect_size and `modifies` tested. Operator-specific measurements live in test_operators.py.
"""
from __future__ import annotations

import copy
import json
import re
from typing import Any

import numpy as np
import pytest

from perturb.clip import Clip
from perturb.operators import (REGISTRY, SEVERITY_LEVELS, Compose, ConfigError, OneOf, Operator,
                               OperatorContext, SomeOf, check_number, modifies_video,
                               operator_keywords, register, replay)
from perturb.operators.frames import KINDS, FrameCorruption
from perturb.operators.timing import AudioShift, LipDrift
from perturb.operators.voice import VoiceSwap

from .fixtures_ops import FPS, SR, natural_frames, speech_like_noise, synth_voice, write_wav

# Keyword sets for code paths the defaults do not reach. Optional: every registered operator is
# tested with its defaults whether it is listed here or not.
VARIANTS: dict[str, list[dict[str, Any]]] = {
    "lip_drift": [{"keep_pitch": True}],
    "audio_shift": [{"offset_range_ms": [1000, 2000]}],
    "frame_corruption": [{"kinds": [kind]} for kind in KINDS],
}
CASES = [(name, kw) for name in sorted(REGISTRY) for kw in [{}, *VARIANTS.get(name, [])]]
CASE_IDS = [name + "".join(f"-{k}={v}" for k, v in kw.items()) for name, kw in CASES]
N_FRAMES = 20  # 0.8 s at 25 fps


@pytest.fixture(scope="module")
def clip() -> Clip:
    """A 0.8 s window with decoded frames and 1 s of audio context on each side."""
    track = speech_like_noise(2.8, seed=3)
    a, b = SR, SR + N_FRAMES * SR // FPS
    return Clip(audio=track[a:b].copy(), sr=SR, fps=FPS, frames=natural_frames(N_FRAMES),
                video_path="fake.mp4", meta={"source_id": "src"},
                context_before=track[:a].copy(), context_after=track[b:].copy())


@pytest.fixture(scope="module")
def context(clip, tmp_path_factory) -> OperatorContext:
    pool = tmp_path_factory.mktemp("pool")
    donors = [pool / "other_speaker.wav", pool / "low_speaker.wav"]  # two voices: donor rankings differ
    write_wav(donors[0], synth_voice(3.0, f0=210.0, seed=4))
    write_wav(donors[1], synth_voice(3.0, f0=95.0, seed=5))
    source = pool / "src.wav"  # the window is unvoiced noise: voice descriptors fall back to the source's
    write_wav(source, synth_voice(3.0, f0=140.0, seed=6))
    return OperatorContext(source_id="src", split="train", donor_pool=tuple(map(str, donors)), clip=clip,
                           source_path=str(source))


@pytest.fixture
def registry_guard():
    """Operators registered by a test are gone after it."""
    before = dict(REGISTRY)
    yield
    REGISTRY.clear()
    REGISTRY.update(before)


# ------------------------------------------------------------------------------ generic checks
def _snapshot(clip: Clip) -> Clip:
    return copy.deepcopy(clip)


def _assert_same_clip(a: Clip, b: Clip) -> None:
    np.testing.assert_array_equal(a.audio, b.audio)
    np.testing.assert_array_equal(a.context_before, b.context_before)
    np.testing.assert_array_equal(a.context_after, b.context_after)
    assert (a.frames is None) == (b.frames is None) and a.video_path == b.video_path
    if a.frames is not None:
        np.testing.assert_array_equal(a.frames, b.frames)
    assert (a.sr, a.fps, a.meta) == (b.sr, b.fps, b.meta)


def check_sampling(op: Operator, severity: int, seed: int) -> dict[str, Any]:
    """Params are a function of (rng, severity), survive JSON, and make a positive float defect."""
    params = op.sample_params(np.random.default_rng(seed), severity)
    assert op.sample_params(np.random.default_rng(seed), severity) == params
    assert json.loads(json.dumps(params)) == params, "params must survive JSON unchanged"
    size = op.defect_size(params)
    assert isinstance(size, float) and size > 0, f"defect_size must be a positive float, got {size!r}"
    return params


def check_apply(op: Operator, clip: Clip, params: dict[str, Any]) -> None:
    """apply is pure, replays from its JSON record, and changes only what `modifies` says."""
    before = _snapshot(clip)
    out = op.apply(clip, params)
    _assert_same_clip(op.apply(clip, params), out)
    record = json.loads(json.dumps([{"name": op.name, "params": params}]))
    _assert_same_clip(replay(clip, record), out)  # replay builds the operator with its defaults
    _assert_same_clip(clip, before)  # the input is never modified in place
    assert out.audio.dtype == np.float32 and len(out.audio) == len(clip.audio)
    frames = out.load_frames()
    assert frames.dtype == np.uint8 and frames.shape == clip.frames.shape
    audio_changed = not np.array_equal(out.audio, clip.audio)
    picture_changed = not np.array_equal(frames, clip.frames)
    assert modifies_video(record) == (op.modifies in ("video", "both"))
    if op.modifies == "audio":
        assert audio_changed, "an audio operator must change the audio"
        assert not picture_changed and out.video_path == clip.video_path, "audio operator changed the picture"
    elif op.modifies == "video":
        assert picture_changed and not out.video_untouched, "a video operator must change the picture"
        assert not audio_changed, "video operator changed the audio"
        np.testing.assert_array_equal(out.extended_audio(), clip.extended_audio())
    else:
        assert audio_changed or picture_changed


def check_defect_grows(op: Operator, draws: int = 40) -> None:
    """Mean defect_size over sampled params never falls from one severity to the next, and rises."""
    rng = np.random.default_rng(0)
    means = [np.mean([op.defect_size(op.sample_params(rng, sev)) for _ in range(draws)])
             for sev in SEVERITY_LEVELS]
    assert all(b >= a for a, b in zip(means, means[1:])) and means[-1] > means[0], means


# ------------------------------------------------------------------ every registered operator
def test_every_registered_operator_is_covered():
    assert {name for name, _ in CASES} == set(REGISTRY)
    assert set(VARIANTS) <= set(REGISTRY)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_builds_with_defaults_and_keywords_are_declared(name):
    cls = REGISTRY[name]
    op = cls()
    keywords = operator_keywords(cls)
    assert "p" in keywords and op.p == keywords["p"]
    for key in keywords:  # documented, as audiomentations documents its transforms' arguments
        assert re.search(rf"\b{key}\b", cls.__doc__ or ""), f"{name}: keyword {key!r} not in the docstring"
    assert cls(**op.config, p=op.p).config == op.config  # every keyword is held under its own name


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_unknown_keyword_and_bad_p_are_refused(name):
    cls = REGISTRY[name]
    with pytest.raises(ConfigError) as err:
        cls(no_such_keyword=1)
    message = str(err.value)
    assert "'no_such_keyword'" in message and "\n" not in message
    assert all(key in message for key in operator_keywords(cls))
    for p in (-0.1, 1.5, "0.5"):
        with pytest.raises(ConfigError, match=r"\bp must be"):
            cls(p=p)


@pytest.mark.parametrize("name,kw", CASES, ids=CASE_IDS)
def test_params_json_pure_replayable_and_modify_what_they_say(name, kw, clip, context):
    op = REGISTRY[name](**kw).with_context(context)
    for severity in (1, 3, 5):
        for seed in (0, 1):
            check_apply(op, clip, check_sampling(op, severity, seed))


@pytest.mark.parametrize("name,kw", CASES, ids=CASE_IDS)
def test_defect_size_grows_with_severity(name, kw, context):
    check_defect_grows(REGISTRY[name](**kw).with_context(context))


# ------------------------------------------------------------- the checks catch broken operators
class ToyGain(Operator):
    """Quieter audio (the README's example operator).

    Keywords:
        step_db: attenuation per severity level in dB, > 0. Default 3.0.
        p: probability of applying. Default 1.0.
    """

    modifies = "audio"

    def __init__(self, *, step_db: float = 3.0, p: float = 1.0) -> None:
        super().__init__(p=p)
        self.step_db = check_number(self.name, "step_db", step_db, 0.0, lo_open=True)

    def sample_params(self, rng, severity):
        return {"gain_db": round(float(rng.uniform(0.5, 1.0)) * self.step_db * severity, 3)}

    def apply(self, clip, params):
        return clip.with_audio(clip.audio * 10 ** (-params["gain_db"] / 20))

    def defect_size(self, params):
        return float(params["gain_db"])


def test_a_registered_toy_operator_passes_the_generic_checks(registry_guard, clip, context):
    register("toy_gain")(ToyGain)
    op = REGISTRY["toy_gain"]().with_context(context)
    check_apply(op, clip, check_sampling(op, 2, 0))
    check_defect_grows(op)
    with pytest.raises(ConfigError, match=r"toy_gain: unknown keyword 'stepdb' \(did you mean 'step_db'\?\); valid: p, step_db"):
        ToyGain(stepdb=1.0)


class _InPlace(ToyGain):
    def apply(self, clip, params):
        clip.audio[:] *= 0.5  # modifies the caller's clip
        return clip.with_audio(clip.audio)


class _TouchesPicture(ToyGain):
    def apply(self, clip, params):  # says "audio", changes the picture
        return super().apply(clip, params).with_frames(255 - clip.load_frames())


class _Impure(ToyGain):
    def apply(self, clip, params):
        return clip.with_audio(clip.audio * np.random.default_rng().uniform(0.1, 0.9))


class _NotJson(ToyGain):
    def sample_params(self, rng, severity):
        return {"gain_db": np.float32(severity)}


class _FlatDefect(ToyGain):
    def defect_size(self, params):
        return 1.0


@pytest.mark.parametrize("broken", [_InPlace, _TouchesPicture, _Impure, _NotJson, _FlatDefect],
                         ids=lambda c: c.__name__)
def test_the_generic_checks_catch_a_broken_operator(broken, registry_guard, clip):
    register("toy_broken")(broken)
    op = broken()
    with pytest.raises((AssertionError, TypeError)):
        check_apply(op, _snapshot(clip), check_sampling(op, 2, 0))
        check_defect_grows(op)


# --------------------------------------------------------------- refused at registration
def _toy(**attrs) -> type:
    """A ToyGain variant with some attributes replaced (None removes one)."""
    body = {k: v for k, v in vars(ToyGain).items() if not k.startswith("__") or k in ("__init__", "__doc__")}
    body.update(attrs)
    return type("BadToy", (Operator,), {k: v for k, v in body.items() if v is not None})


def _init_with_config(self, p: float = 1.0, **config):
    pass


def _init_no_default(self, *, step_db: float, p: float = 1.0):
    pass


def _init_no_p(self, *, step_db: float = 3.0):
    pass


def _init_bad_p(self, *, step_db: float = 3.0, p: float = 1.5):
    pass


def _init_reserved(self, *, weight: float = 1.0, p: float = 1.0):
    pass


@pytest.mark.parametrize("cls,message", [
    (_toy(defect_size=None), r"does not define defect_size\(\)"),
    (_toy(apply=None), r"does not define apply\(\)"),
    (_toy(modifies="frames"), r"modifies must be one of \('audio', 'video', 'both'\), got 'frames'"),
    (_toy(__init__=_init_with_config), r"__init__ takes \*\*config"),
    (_toy(__init__=_init_no_default), r"keyword 'step_db' has no default"),
    (_toy(__init__=_init_no_p), r"lacks the keyword p"),
    (_toy(__init__=_init_bad_p), r"p must be in \[0, 1\], got 1.5"),
    (_toy(__init__=_init_reserved), r"keyword 'weight' is reserved"),
    (type("NotAnOperator", (), {"modifies": "audio"}), r"subclass perturb.operators.Operator"),
], ids=["no-defect_size", "no-apply", "modifies-frames", "kwargs", "no-default", "no-p", "p-1.5",
        "reserved", "not-operator"])
def test_a_bad_operator_class_is_refused_at_registration(cls, message, registry_guard):
    with pytest.raises(TypeError, match=message) as err:
        register("toy_bad")(cls)
    assert "\n" not in str(err.value) and "toy_bad" in str(err.value)
    assert "toy_bad" not in REGISTRY


def test_bad_or_taken_names_are_refused(registry_guard):
    with pytest.raises(ValueError, match="lower-case letters"):
        register("Toy Gain")(ToyGain)
    with pytest.raises(ValueError, match="already registered"):
        register("audio_shift")(ToyGain)
    assert REGISTRY["audio_shift"] is AudioShift


# ------------------------------------------------------------------ keywords: typos and ranges
def test_lip_drift_keyword_typo_names_the_key_and_the_valid_ones():
    with pytest.raises(ConfigError) as err:
        LipDrift(keep_pich=True)
    assert str(err.value) == ("lip_drift: unknown keyword 'keep_pich' (did you mean 'keep_pitch'?); "
                              "valid: keep_pitch, p")


@pytest.mark.parametrize("make,message", [
    (lambda: LipDrift(keep_pitch="yes"), "keep_pitch must be true or false"),
    (lambda: VoiceSwap(donor_mode_prob=1.5), r"donor_mode_prob must be in \[0, 1\], got 1.5"),
    (lambda: VoiceSwap(clip_duration=0), r"clip_duration must be in \(0, inf\)"),
    (lambda: VoiceSwap(formant_follow=[0.8, 0.2]), r"formant_follow\[1\] must be in \[0.8, 1\]"),
    (lambda: VoiceSwap(formant_follow=[0.5]), "formant_follow must be a list of 2 items"),
    (lambda: VoiceSwap(donors="a.wav"), "donors must be a list"),
    (lambda: FrameCorruption(kinds=["blur", "smudge"]), r"unknown kind 'smudge'; valid: block, blur"),
    (lambda: FrameCorruption(kinds=[]), "kinds must be a list of at least 1"),
    (lambda: AudioShift(p=2), r"audio_shift: p must be in \[0, 1\], got 2"),
    (lambda: OneOf([AudioShift()], p=-1), r"OneOf: p must be in \[0, 1\]"),
    (lambda: Compose([AudioShift()], p=1.01), r"Compose: p must be in \[0, 1\]"),
    (lambda: SomeOf([AudioShift()], n=1, p=True), "SomeOf: p must be a number"),
])
def test_keyword_values_are_range_checked_on_construction(make, message):
    with pytest.raises(ConfigError, match=message) as err:
        make()
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------------------ context hook
def test_with_context_reaches_every_leaf_and_leaves_the_tree_alone(context):
    plain = Compose([AudioShift(), OneOf([LipDrift(), SomeOf([FrameCorruption()], n=1)])])
    assert plain.with_context(context) is plain  # nothing reads the context: no copies
    tree = OneOf([AudioShift(), Compose([VoiceSwap(donor_mode_prob=1.0)])])
    bound = tree.with_context(context)
    assert bound is not tree and bound.leaves()[0] is tree.leaves()[0]
    assert bound.leaves()[1].usable_donors() == list(context.donor_pool)
    assert tree.leaves()[1].usable_donors() == []  # the unbound tree is unchanged
    draws = [rec for seed in range(10) for rec in bound.sample(np.random.default_rng(seed), 2)
             if rec["name"] == "voice_swap"]
    assert draws and all(rec["params"]["donor_path"] in context.donor_pool for rec in draws)
