"""Deprecated alias of `momil.correct`, kept so that earlier code and the README's names keep working.

The contents now live in:

- `momil.prep.correct`
"""

from momil.prep.correct import (  # noqa: F401
    MAD_SCALE,
    CorrectSettings,
    correct,
    load_correction_stats,
    mad_robustize,
    plate_statistics,
    plate_variance_fraction,
    robust_center_scale,
)
