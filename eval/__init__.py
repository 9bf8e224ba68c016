"""avbench.eval: calibrate, evaluate, export and apply the judges.

    from eval import Scorer
    Scorer.from_pretrained("exports/lip_sync").score("video.mp4")

Imports are lazy (PEP 562) so that `python -m eval --help` does not load torch.
"""
from __future__ import annotations

__all__ = ["Scorer", "fit_calibrator", "evaluate"]


def __getattr__(name: str):
    if name == "Scorer":
        from .scorer import Scorer

        return Scorer
    if name == "fit_calibrator":
        from .calibration import fit_calibrator

        return fit_calibrator
    if name == "evaluate":
        from .evaluate import evaluate

        return evaluate
    raise AttributeError(f"module 'eval' has no attribute {name!r}")
