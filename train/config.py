"""Training configuration: the YAML of python -m train (and of train.pretrain, train.data featurize,
bench scripts), checked on load, and the preprocessing the model's encoders need."""
from __future__ import annotations

from pathlib import Path
from typing import Any

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
CONFIG_SECTIONS = {"dim", "question", "seed", "plugins", "preprocess", "model", "train", "objectives", "pretrain"}


def load_config(dim: str, path: str | None) -> dict[str, Any]:
    """The training YAML; an unknown section, an unknown key in preprocess:, train:, objectives: or
    pretrain:, or a number outside its range (PREPROCESS_RANGES, MODEL_RANGES, TRAIN_RANGES) stops with
    one line naming it (model: keys are checked by JudgeConfig). The file: at most 1 MB, no YAML aliases."""
    from perturb.shard_format import parse_config_yaml, read_config_text

    from .arguments import check_keys, check_train_values, init_fields
    from .model import MODEL_RANGES
    from .preprocess import PREPROCESS_RANGES, PreprocessConfig, check_values
    from .trainers import check_config_sections

    p = Path(path) if path else CONFIG_DIR / f"{dim}.yaml"
    if not p.is_file():
        raise SystemExit(f"no training config {p} (write one or pass --config)")
    try:
        cfg = parse_config_yaml(read_config_text(p), p) or {}
    except ValueError as err:
        raise SystemExit(str(err)) from None
    if not isinstance(cfg, dict):
        raise SystemExit(f"{p}: expected a mapping of sections ({', '.join(sorted(CONFIG_SECTIONS))}), "
                         f"got {type(cfg).__name__}")
    unknown = sorted(set(cfg) - CONFIG_SECTIONS, key=str)
    if unknown:
        raise SystemExit(f"{p}: unknown section(s) {unknown}; valid: {sorted(CONFIG_SECTIONS)}")
    for key in ("dim", "question"):
        if cfg.get(key) is not None and not isinstance(cfg[key], str):
            raise SystemExit(f"{p}: {key} must be a string, got {cfg[key]!r}")
    if not isinstance(cfg.get("plugins") or [], list) or not all(isinstance(m, str) for m in cfg.get("plugins") or []):
        raise SystemExit(f"{p}: plugins must be a list of module names, got {cfg['plugins']!r}")
    try:
        check_keys("preprocess", cfg.get("preprocess"), init_fields(PreprocessConfig))
        check_config_sections(cfg)
        check_values("preprocess", cfg.get("preprocess"), PREPROCESS_RANGES)
        check_values("model", cfg.get("model"), MODEL_RANGES)
        check_train_values(cfg)
    except ValueError as err:
        raise SystemExit(f"{p}: {err}") from None
    cfg["_path"] = str(p)
    return cfg


def check_augment(conf: dict[str, Any], pre: Any) -> None:
    """Landmark augmentations only where the video input is landmarks: another rank-3 input (a frozen
    encoder's precomputed output) would be garbled silently."""
    augment = (conf.get("train") or {}).get("augment")
    if isinstance(augment, dict) and pre.video_input != "landmarks" and \
            any(augment.get(k) for k in ("landmark_affine", "landmark_noise")):
        raise SystemExit(f"{conf.get('_path')}: train: augment: landmark_affine / landmark_noise move landmark "
                         f"points; this judge's video input is {pre.video_input!r}, not landmarks")


def resolve_preprocess(conf: dict[str, Any], plugins: list[str]) -> dict[str, Any]:
    """The YAML preprocess section with what the model's encoders need filled in (a conflict is an error)."""
    from .encoders import preprocess_needs

    model = conf.get("model") or {}
    pre = dict(conf.get("preprocess") or {})
    needs = preprocess_needs(model.get("frame_encoder", "cnn"), model.get("audio_encoder", "mel_conv"), plugins)
    for key, value in needs.items():
        given = pre.get(key, value)
        if (list(given) if isinstance(given, (list, tuple)) else given) != \
                (list(value) if isinstance(value, (list, tuple)) else value):
            raise SystemExit(f"{conf.get('_path')}: preprocess {key}: {given!r} conflicts with the model's "
                             f"encoders, which need {key}: {value!r}")
        pre[key] = value
    return pre


def ranged(name: str):
    """An argparse type for an override of the config field `name`, within arguments.TRAIN_RANGES
    (imported when the flag is given: --help stays fast)."""
    def parse(text: str):
        from .arguments import parse_override

        return parse_override(name, text)
    return parse
