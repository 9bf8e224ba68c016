"""Progress lines for logs: how far, how long so far, and about how long is left."""
from __future__ import annotations


def duration(seconds: float) -> str:
    """45s, 3m05s, 1h02m: rounded to what a reader plans with."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def progress(done: int, total: int | None, elapsed: float) -> str:
    """'120/400 (30%), 1m10s, about 2m43s left'; without a known total only the count and the time.
    The estimate assumes the remaining items take as long as the finished ones did on average."""
    if not total or done <= 0:
        return f"{done}/{total or '?'}, {duration(elapsed)}"
    left = elapsed / done * max(0, total - done)
    return f"{done}/{total} ({100 * done // total}%), {duration(elapsed)}, about {duration(left)} left"
