"""Progress of a long loop: a tqdm bar on a terminal, a log line every few seconds in a job log."""

from __future__ import annotations

import sys
import time


class Progress:
    """Items/s and ETA: a tqdm bar on a terminal, a log line every ``every_s`` seconds otherwise."""

    def __init__(self, total: int, log, every_s: float = 15.0, unit: str = "patch") -> None:
        from tqdm import tqdm

        self.total = total
        self.done = 0
        self.log = log
        self.every_s = every_s
        self.unit = unit
        self.start = self.last = time.perf_counter()
        self.bar = tqdm(total=total, unit=unit, disable=not sys.stderr.isatty(), leave=False)

    def update(self, n: int) -> None:
        self.done += n
        self.bar.update(n)
        now = time.perf_counter()
        if self.bar.disable and now - self.last >= self.every_s and self.done < self.total:
            self.last = now
            self.log.info("%s", self.line(now))

    def line(self, now: float | None = None) -> str:
        elapsed = (now or time.perf_counter()) - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        pct = 100.0 * self.done / max(1, self.total)
        units = "patches" if self.unit == "patch" else f"{self.unit}s"
        return (
            f"{self.done}/{self.total} {units} ({pct:.0f} %), {rate:.1f} {units}/s, ETA {eta:.0f} s"
        )

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def close(self) -> None:
        self.bar.close()
