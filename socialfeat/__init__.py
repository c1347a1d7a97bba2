"""socialfeat: per-clip face and voice descriptors from recordings of human interaction.

>>> import socialfeat
>>> df = socialfeat.load_features("feats.h5")  # doctest: +SKIP
"""

__version__ = "0.3.0"

from socialfeat.preprocess import fbank, frames_tensor  # noqa: E402
from socialfeat.store import load_errors, load_features, load_videos  # noqa: E402

__all__ = ["__version__", "fbank", "frames_tensor", "load_features", "load_videos",
           "load_errors"]
