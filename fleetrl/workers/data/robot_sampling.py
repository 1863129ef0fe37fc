"""Dynamic per-robot sampling of the online partition (VLAC appendix D).

Why it exists: robots that lag should be learned from more. Robot r's transitions get weight
``(1 - s_r + eps) ** alpha``, where ``s_r`` is r's success rate over its last ``window`` labelled online
episodes (``aborted`` ones carry no label and are not counted). ``alpha = 0`` is uniform; larger alpha
favours robots that lag more. The probability of drawing robot r is therefore ∝ w_r · (r's online
transitions). Robots are numbered in the order they are first seen, so batches carry small int codes.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

import numpy as np


class RobotSampling:
    """Robot codes, each robot's recent success labels, and the per-robot weights derived from them."""

    def __init__(self, alpha: float, eps: float, window: int) -> None:
        self.alpha, self.eps, self.window = alpha, eps, window
        self.version = 0  # bumps with every label, so cached sampling tables know to rebuild
        self._codes: dict[str, int] = {}
        self.names = np.zeros(0, dtype=object)  # code -> robot id
        self._history: dict[int, deque[bool]] = {}

    def code(self, robot_id: str) -> int:
        """The robot's int code (a new one for a robot not seen before)."""
        code = self._codes.get(robot_id)
        if code is None:
            code = self._codes[robot_id] = len(self._codes)
            self.names = np.array(list(self._codes), dtype=object)
        return code

    def record(self, code: int, success: bool) -> None:
        """Note the outcome of a labelled online episode of robot ``code``."""
        self._history.setdefault(code, deque(maxlen=self.window)).append(success)
        self.version += 1

    def weight_array(self) -> np.ndarray | None:
        """Per-transition weight by robot code; None when sampling is uniform (alpha 0)."""
        if self.alpha == 0:
            return None
        w = np.ones(len(self._codes))
        for code, hist in self._history.items():
            rate = sum(hist) / len(hist)
            w[code] = (1.0 - rate + self.eps) ** self.alpha
        return w

    def relative_weights(self, codes: Iterable[int]) -> dict[str, float]:
        """Relative per-transition weight of each robot in ``codes`` (sums to 1)."""
        w = self.weight_array()
        ordered = sorted(set(codes))
        vals = np.array([1.0 if w is None else w[c] for c in ordered])
        total = vals.sum()
        return {str(self.names[c]): float(v / total) for c, v in zip(ordered, vals, strict=True)}

    def success_rates(self) -> dict[str, float]:
        """Each robot's success rate over its window of recent labelled online episodes."""
        return {str(self.names[c]): sum(h) / len(h) for c, h in self._history.items() if h}
