"""The gateway's garbage-collector settings: what lives at start-up is frozen out of later passes, and the
thresholds are the documented ones."""

from __future__ import annotations

import gc

from fleetrl.workers.gateway.gc_tuning import GC_THRESHOLDS, calm_garbage_collector


def test_the_collector_keeps_what_lives_now_out_of_its_passes():
    before = gc.get_threshold()
    try:
        calm_garbage_collector()
        assert gc.get_threshold() == GC_THRESHOLDS and gc.get_freeze_count() > 0
        kept = gc.get_freeze_count()
        assert gc.collect() >= 0 and gc.get_freeze_count() == kept  # a later pass leaves them frozen
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
