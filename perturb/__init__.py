"""avbench.perturb: real talking videos -> perturbed preference pairs -> WebDataset shards."""
from .clip import Clip
from .media import CANONICAL_FPS, CANONICAL_SR, MediaError

__all__ = ["Clip", "CANONICAL_FPS", "CANONICAL_SR", "MediaError"]
