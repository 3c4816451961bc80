"""A resolved config read back from disk: ``--config=configs/resolved.py:DIR/config.json``.

Every run writes the config it trains with to ``WORKDIR/config.json``. A sweep
(``launch/sweep.py``) writes that file for each of its runs before any of them starts and then
launches ``launch.train`` with this file, so a run that is resumed, requeued or retried later
trains exactly what was expanded, even if ``configs/t5.py`` changed in between. Command-line
overrides still apply on top, as for any config file.
"""

from __future__ import annotations

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    if not arg:
        raise ValueError("configs/resolved.py needs the file to read: "
                         "--config=configs/resolved.py:WORKDIR/config.json")
    return common.read_config(arg)
