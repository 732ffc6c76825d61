"""Choosing a target for a model: weighted random over the targets with a weight above zero.

Later strategies (least busy, latency, speculative-aware, fallbacks) plug in here.
"""

from __future__ import annotations

import bisect
import itertools
import random

from gateway.policy import ModelRoute, Target


class WeightedChoice:
    __slots__ = ("_cumulative", "_targets", "_total")

    def __init__(self, route: ModelRoute) -> None:
        self._targets = [t for t in route.targets if t.weight > 0]
        self._cumulative = list(itertools.accumulate(t.weight for t in self._targets))
        self._total = self._cumulative[-1]

    def choose(self, rng: random.Random | None = None) -> Target:
        if len(self._targets) == 1:
            return self._targets[0]
        point = (rng or random).random() * self._total
        return self._targets[min(bisect.bisect_right(self._cumulative, point), len(self._targets) - 1)]
