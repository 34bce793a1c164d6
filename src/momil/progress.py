"""Progress bars (tqdm): a rate and an estimate for every long stage; silent when disabled."""

from __future__ import annotations

import os
import sys

from tqdm.auto import tqdm


def progress(total=None, desc: str = "", unit: str = "it", enabled: bool = True, **kwargs):
    """A tqdm bar on stderr; ``MOMIL_NO_PROGRESS=1`` or ``enabled=False`` turns it off."""
    disable = (not enabled) or os.environ.get("MOMIL_NO_PROGRESS") == "1"
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        unit_scale=True,
        disable=disable,
        file=sys.stderr,
        dynamic_ncols=True,
        mininterval=0.5,
        **kwargs,
    )
