"""The entry worker's admission bound: as many requests as it can answer within the target.

A fixed count of requests in progress is the wrong bound on its own: what a count admits is a
wait, and the wait depends on how fast the worker answers (a worker that answers a thousand
requests a second and admits a thousand holds each for a second). Little's law turns the
latency target into a count: a worker that completes X requests per second and holds L of them
in progress keeps each for L / X seconds on average, so L = X × target × MEAN_SHARE holds the
mean time inside the worker to a share of the target, leaving the rest for the tail and for
the time a request spends before the handler sees it.

When that bound applies is CoDel's rule (Nichols and Jacobson, "Controlling Queue Delay",
ACM Queue 2012; used for server request queues in "Fail at Scale", ACM Queue 2015): a
queue is standing, not a passing burst, when even the fastest request of a whole interval
took longer than the target. Only then is the Little's-law count applied; until then the
bound is the fixed ceiling (`max_concurrent_requests`), so load within capacity and bursts
are never shed. It stays applied while it still sheds; an interval that completes without
shedding a single request (demand fits under the count) lifts it again. It never goes below
a floor (`min_concurrent_requests`): on cores shared with other work the worker slows down
for a while with no excess load at all, and a load that concurrent is within capacity.

What the bound cannot see from inside the worker is the wait before a request reaches it: on
the entry's one event loop, a request is read only when the loop gets to it, and under
overload the loop spends its core on the requests it admits and on refusing the rest. Once the
loop has no time to spare, requests arrive faster than it reads them and the excess waits in
the kernel's socket queues (`bench.overload` shows it: the accepted requests' p99 as the
client sees it is many times their time inside the worker). So the loop's own load is a second
signal: over an interval in which it shed and its thread was busy (CPU time, not wall time)
nearly all the time, the count is cut by a headroom factor, below the floor if need be, until
the loop has time to spare; each interval without that, the factor grows back. CPU time,
because a worker stalled by other processes on its cores (a busy CI machine) lags with its
thread idle: that is no reason to shed, and the floor still holds then.

No maintained Python library does this for an asyncio server (the PyPI packages found are
client-side AIMD throttles for calls to rate-limited APIs; Netflix's concurrency-limits is
Java, Envoy's adaptive-concurrency filter C++), so it is this small class. Every method is
O(1) and runs on the worker's event loop: no lock, no thread.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

# Of the latency target, the share the mean time inside the worker may use (see above).
MEAN_SHARE = 0.5
# CoDel's interval: long enough to hold many completions at load, short enough to react.
INTERVAL_S = 0.1
# Fewer completions than this in an interval say nothing about a standing queue.
MIN_SAMPLES = 8
# Weight of the newest interval's completion rate in its moving average.
RATE_WEIGHT = 0.3
# The loop thread's busy share (CPU time / wall time) at which it has no headroom left.
SATURATED = 0.9
# The headroom factor: cut by this in each saturated interval that sheds, at least MIN, ...
HEADROOM_CUT = 0.7
MIN_HEADROOM = 0.05
# ... and grown back by this in each interval that is not.
HEADROOM_GAIN = 0.1


class LatencyBound:
    """Requests admitted at once: a ceiling, lowered to rate × target under a standing queue."""

    def __init__(
        self,
        target_s: float,
        ceiling: int,
        floor: int = 1,
        *,
        interval_s: float = INTERVAL_S,
        clock: Callable[[], float] = time.perf_counter,
        cpu_clock: Callable[[], float] = time.thread_time,
    ) -> None:
        """`target_s` 0 turns the bound off: the ceiling alone applies.

        `cpu_clock`: the CPU time of the thread that calls `completed` (the event loop's).
        """
        self.target_s = target_s
        self.ceiling = ceiling
        self.floor = min(floor, ceiling)
        self.interval_s = interval_s
        self._clock = clock
        self._cpu_clock = cpu_clock
        self.limit = ceiling
        self.engaged = False
        self.rate = 0.0  # completions per second, moving average over intervals
        self.busy = 0.0  # the loop thread's busy share in the last interval
        self.headroom = 1.0
        self._start = clock()
        self._cpu_start = cpu_clock()
        self._completions = 0
        self._fastest = math.inf
        self._shed = False

    def completed(self, latency_s: float) -> None:
        """One admitted request answered after `latency_s` inside the worker."""
        if not self.target_s:
            return
        self._completions += 1
        self._fastest = min(self._fastest, latency_s)
        now = self._clock()
        if now - self._start >= self.interval_s:
            self._close_interval(now)

    def shed(self) -> None:
        """One request refused because `limit` was reached."""
        self._shed = True

    def _close_interval(self, now: float) -> None:
        elapsed = now - self._start
        cpu_now = self._cpu_clock()
        if elapsed <= 2 * self.interval_s:  # a gap (idle worker) is no measurement of rate
            rate = self._completions / elapsed
            self.rate = rate if not self.rate else self.rate + RATE_WEIGHT * (rate - self.rate)
            self.busy = (cpu_now - self._cpu_start) / elapsed
            standing = self._completions >= MIN_SAMPLES and self._fastest > self.target_s
            if standing:
                self.engaged = True
            elif not self._shed:
                self.engaged = False
            if self._shed and self.busy >= SATURATED:
                self.headroom = max(MIN_HEADROOM, self.headroom * HEADROOM_CUT)
            else:
                self.headroom = min(1.0, self.headroom + HEADROOM_GAIN)
        else:
            self.engaged = False
            self.headroom = 1.0
        if self.engaged:
            count = math.ceil(self.rate * self.target_s * MEAN_SHARE * self.headroom)
            floor = self.floor if self.headroom >= 1.0 else 1
            self.limit = max(floor, min(self.ceiling, count))
        else:
            self.limit = self.ceiling
        self._start = now
        self._cpu_start = cpu_now
        self._completions = 0
        self._fastest = math.inf
        self._shed = False
