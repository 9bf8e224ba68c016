"""Backbones of the judge, registered by name: video encoders and audio encoders.

AVJudge (train/model.py) is

    video (B, T, ...) --video encoder--> (B, F, T) --temporal conv--> v_t (B, D, T)
    audio (B, n_feat, R*T) --audio encoder--> a_t (B, D, T)
    sync profile c_k = mean_t cos(v_t, a_{t+k}) over offsets k --> head --> logits [no, yes]

and the judge config names its encoders (`frame_encoder`, `audio_encoder`). A new backbone is one
registered class in a file of its own; training, the Scorer and the CLIs find it by name:

    from train.encoders import VideoEncoder, register_video_encoder

    @register_video_encoder("my_encoder")
    class MyEncoder(VideoEncoder):
        preprocess_needs = {"crop": "face", "crop_size": (64, 64)}   # PreprocessConfig fields it requires

        def __init__(self, config):                  # config: train.model.JudgeConfig
            super().__init__()
            self.net = ...
            self.n_features = 64                     # F, features per video frame

        def forward(self, video):                    # (B, T, C, H, W) -> (B, F, T)
            ...

A module that is not part of avbench is imported with `--plugin my_pkg.my_encoder` (python -m train,
python -m eval ...), the `plugins:` list of a training YAML, or AVBENCH_PLUGINS=mod1,mod2.

Contract, checked at registration:
  * `preprocess_needs`: dict of PreprocessConfig field -> value. `python -m train` fills these
    into the preprocessing section and refuses a YAML that sets them otherwise.
  * `n_features` (video) after __init__; audio encoders return (B, config.emb_dim, T) directly.
  * `input_rank`: rank of the batched input the encoder reads (5 = (B, T, C, H, W) crops).
  * `frozen`: True when no parameter is trained (the judge then precomputes its output once per
    clip instead of every step, train.data.precompute_video_features); a frozen encoder stays in
    eval mode (its BatchNorm statistics are the pretrained ones).
"""
from __future__ import annotations

from .base import (AUDIO_ENCODERS, FREEZE_MODES, VIDEO_ENCODERS, AudioEncoder, VideoEncoder, audio_encoder_class,
                   import_plugins, preprocess_needs, register_audio_encoder, register_video_encoder,
                   video_encoder_class)
from . import frames, landmarks, light_asd, mel, resemblyzer  # noqa: E402,F401  (register the built-in front-ends)

__all__ = ["AUDIO_ENCODERS", "FREEZE_MODES", "VIDEO_ENCODERS", "AudioEncoder", "VideoEncoder", "audio_encoder_class",
           "import_plugins", "preprocess_needs", "register_audio_encoder", "register_video_encoder",
           "video_encoder_class"]
