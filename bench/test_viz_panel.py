"""Time of one five-view 256² result panel (moved here from the tests: tests never time).

Run: pytest bench/test_viz_panel.py --benchmark-json=bench-viz.json
"""

from __future__ import annotations

import numpy as np

from vsad.viz import view_panel


def test_view_panel_five_views(benchmark, machine):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (256, 256, 3), dtype=np.uint8) for _ in range(5)]
    maps = [rng.random((256, 256), dtype=np.float32) for _ in range(5)]
    masks = [rng.random((256, 256)) > 0.99 for _ in range(5)]
    kwargs = dict(masks=masks, sample_score=1.0, threshold=0.5, title="s")
    panel = view_panel(images, maps, **kwargs)  # warm-up (lookup tables, font)
    assert panel.dtype == np.uint8 and panel.shape[2] == 3
    benchmark.group = "view_panel 5 x 256x256"
    benchmark.pedantic(lambda: view_panel(images, maps, **kwargs), rounds=20, warmup_rounds=1)
    benchmark.extra_info.update(machine, provider="vsad.viz")
