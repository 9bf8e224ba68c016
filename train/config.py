"""Training configuration: the YAML of python -m train (and of train.pretrain, train.data featurize,
bench scripts), checked on load, and the preprocessing the model's encoders need."""
from __future__ import annotations

from pathlib import Path
from typing import Any

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
CONFIG_SECTIONS = {"dim", "question", "seed", "plugins", "preprocess", "model", "train", "objectives", "pretrain"}


def load_config(dim: str, path: str | None, card: dict[str, Any] | None = None, log=None) -> dict[str, Any]:
    """The training YAML; an unknown section, an unknown key in preprocess:, train:, objectives: or
    pretrain:, or a number outside its range (PREPROCESS_RANGES, MODEL_RANGES, TRAIN_RANGES) stops with
    one line naming it (model: keys are checked by JudgeConfig). The file: at most 1 MB, no YAML aliases.

    Without `path` and without train/configs/<dim>.yaml, the default for what the recipe's operators
    modify (default_config, from the shards' data card `card`); `log` gets the line saying which."""
    from perturb.shard_format import parse_config_yaml, read_config_text

    from .arguments import check_keys, check_train_values, init_fields
    from .model import MODEL_RANGES
    from .preprocess import PREPROCESS_RANGES, PreprocessConfig, check_values
    from .trainers import check_config_sections

    p = Path(path) if path else CONFIG_DIR / f"{dim}.yaml"
    default_for = None
    if not path and not p.is_file() and dim:
        p, why = default_config(dim, card)
        default_for = dim
        (log or print)(f"[train] {why}")
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
    if default_for:  # the default speaks for this dimension, with the recipe's question
        cfg["dim"] = default_for
        cfg["question"] = (card or {}).get("question") or cfg.get("question")
    return cfg


def check_augment(conf: dict[str, Any], pre: Any) -> None:
    """Landmark augmentations only where the video input is landmarks: another rank-3 input (a frozen
    encoder's precomputed output) would be garbled silently. No augmentation (it is on by default) for
    a judge that reads whole frames and the waveform (audio_features "waveform")."""
    augment = (conf.get("train") or {}).get("augment")
    per_objective = [(o or {}).get("augment") for o in (conf.get("objectives") or {}).values() if isinstance(o, dict)]
    if pre.audio_features == "waveform" and (augment is not False or any(per_objective)):  # the default is on
        raise SystemExit(f"{conf.get('_path')}: train: augment: the augmentations move crops and log-mel rows; this "
                         f"judge reads whole frames and the waveform: set augment: false")
    if isinstance(augment, dict) and pre.video_input != "landmarks" and \
            any(augment.get(k) for k in ("landmark_affine", "landmark_noise")):
        raise SystemExit(f"{conf.get('_path')}: train: augment: landmark_affine / landmark_noise move landmark "
                         f"points; this judge's video input is {pre.video_input!r}, not landmarks")


def resolve_preprocess(conf: dict[str, Any], plugins: list[str]) -> dict[str, Any]:
    """The YAML preprocess section with what the model's encoders need filled in (a conflict is an error)."""
    from .encoders import preprocess_needs

    model = conf.get("model") or {}
    pre = dict(conf.get("preprocess") or {})
    if model.get("backbone"):  # a judge of another architecture (train.model.BACKBONES) says what it reads
        from .model import backbone_module

        try:
            needs = backbone_module(model["backbone"]).preprocess_needs(model)
        except ValueError as err:
            raise SystemExit(f"{conf.get('_path')}: model: {err}") from None
    else:
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


# A dimension without a config of its own starts from one of these, chosen by what its recipe's
# operators change (the shards' data card records it): each is a copy of a tested config.
DEFAULTS_DIR = CONFIG_DIR / "defaults"
DEFAULT_CONFIGS = {
    "audio": "the sound and the lips (the defect may be in the sound alone or in how it fits the picture)",
    "video": "the picture, with the sound beside it",
    "both": "the face and the voice (pooled embeddings) and their timing",
}


def default_config(dim: str, card: dict[str, Any] | None) -> tuple[Path, str]:
    """(path, one line saying why) of the default config for `dim`, from the operators its data card
    lists with what each modifies; a card without that record (older builds) gets the "both" default."""
    modifies = (card or {}).get("operator_modifies") or {}
    kinds = set(modifies.values())
    kind = "both" if not kinds or "both" in kinds or kinds == {"audio", "video"} else kinds.pop()
    ops = ", ".join(f"{op} ({what})" for op, what in sorted(modifies.items())) or "not recorded in the data card"
    why = (f"no {CONFIG_DIR / f'{dim}.yaml'}: using {DEFAULTS_DIR / f'{kind}.yaml'}, the default for operators that "
           f"change the {kind if kind != 'both' else 'picture and the sound'}: it reads {DEFAULT_CONFIGS[kind]}; "
           f"operators: {ops}. Copy it to {CONFIG_DIR / f'{dim}.yaml'} (or pass --config) to tune it")
    return DEFAULTS_DIR / f"{kind}.yaml", why


# Augmentations that imitate a defect: training one on a judge whose recipe makes that defect
# teaches it to ignore what it must detect (a flicker augmentation for a flicker judge).
AUGMENT_IMITATES: dict[str, tuple[str, ...]] = {
    "flicker": ("frame_corruption",),           # per-frame gain: the colour / brightness corruptions
    "video_noise": ("frame_corruption",),       # sensor noise: the noise corruption
    "audio_noise": ("noise", "snr_noise"),      # added noise
    "freq_mask": ("band_limit", "band_filter"),  # missing frequency bands
    "time_warp": ("tempo_change",),             # another speaking rate
}


def card_for_default_config(dim: str, config: str | None, shards: Any) -> dict[str, Any] | None:
    """The shards' data card when `dim` has no config of its own and none is given (default_config
    reads it); None otherwise, or when the shards cannot be read (their readers say why, in one line)."""
    if config or (CONFIG_DIR / f"{dim}.yaml").is_file():
        return None
    from .data import read_card

    try:
        return read_card(shards)
    except Exception:  # an unusable location is reported by check_location, before anything is created
        return None


def check_augment_against_recipe(where: str, augment: Any, card: dict[str, Any] | None) -> None:
    """SystemExit in one line when an augmentation switched on (`augment: true` turns on
    train.data.Augment's defaults) imitates an operator of the dimension's recipe (the card's)."""
    from .data import make_augment

    aug = make_augment(augment)
    ops = set((card or {}).get("counts_per_operator") or {})
    if aug is None or not ops:
        return
    for name, imitated in AUGMENT_IMITATES.items():
        hit = sorted(ops & set(imitated))
        if getattr(aug, name) and hit:
            raise SystemExit(f"{where}: augment {name}: {getattr(aug, name)} imitates the recipe's {', '.join(hit)}, "
                             f"the defect this judge must detect: set augment: {{{name}: 0}} (`augment: true` turns "
                             "on every default augmentation)")
