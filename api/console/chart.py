"""Messages over time by status, drawn on the server as an SVG (readable without JavaScript).

The chart is a list of stacked bars computed here; the template `chart.html` only places
them. Colours come from the stylesheet (a class per status), so the page needs no inline
style.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from typing import Any

from shared import console, db
from shared.domain import MessageStatus

# range name -> (bucket length, number of buckets)
RANGES: dict[str, tuple[int, int]] = {"24h": (3600, 24), "7d": (6 * 3600, 28)}
WIDTH = 720
HEIGHT = 200
LEFT = 40
BOTTOM = 24
# Bottom to top in a bar: what went well first, then what did not, then what is pending.
ORDER = [
    MessageStatus.read,
    MessageStatus.delivered,
    MessageStatus.sent,
    MessageStatus.complained,
    MessageStatus.bounced,
    MessageStatus.failed,
    MessageStatus.rejected,
    MessageStatus.skipped,
    MessageStatus.canceled,
    MessageStatus.sending,
    MessageStatus.queued,
    MessageStatus.scheduled,
]


@dataclasses.dataclass(frozen=True, slots=True)
class Segment:
    status: str
    n: int
    y: float
    height: float


@dataclasses.dataclass(frozen=True, slots=True)
class Bar:
    x: float
    width: float
    start: dt.datetime
    total: int
    segments: list[Segment]
    label: str


def parse_range(raw: str | None) -> str:
    return raw if raw in RANGES else "24h"


async def build(
    pool: db.Pool,
    org_id: uuid.UUID,
    broadcast_id: uuid.UUID | None,
    range_name: str,
    *,
    test: bool,
    now: dt.datetime | None = None,
) -> dict[str, Any]:
    bucket_s, count = RANGES[range_name]
    now = now or dt.datetime.now(dt.UTC)
    # Buckets aligned to their length (whole hours, whole 6-hour blocks), the last holding now.
    epoch = int(now.timestamp()) // bucket_s * bucket_s
    since = dt.datetime.fromtimestamp(epoch - (count - 1) * bucket_s, dt.UTC)
    rows = await console.counts_over_time(pool, org_id, broadcast_id, since, bucket_s, test=test)
    per_bucket: dict[int, dict[str, int]] = {}
    for r in rows:
        index = int((r["bucket"] - since).total_seconds()) // bucket_s
        if 0 <= index < count:
            per_bucket.setdefault(index, {})[r["status"]] = r["n"]
    maximum = max((sum(v.values()) for v in per_bucket.values()), default=0)
    plot_h = HEIGHT - BOTTOM - 8
    slot = (WIDTH - LEFT) / count
    bars: list[Bar] = []
    for i in range(count):
        start = since + dt.timedelta(seconds=i * bucket_s)
        counts = per_bucket.get(i, {})
        y = float(HEIGHT - BOTTOM)
        segments: list[Segment] = []
        for status in ORDER:
            n = counts.get(status, 0)
            if not n:
                continue
            h = plot_h * n / maximum
            y -= h
            segments.append(Segment(status.value, n, round(y, 2), round(h, 2)))
        total = sum(counts.values())
        label = start.strftime("%H:%M") if range_name == "24h" else start.strftime("%a %H:%M")
        bars.append(Bar(round(LEFT + i * slot + 1, 2), round(slot - 2, 2), start, total, segments, label))
    used = [s for s in ORDER if any(seg.status == s for b in bars for seg in b.segments)]
    # Three time labels (UTC): the first bar's left edge, the middle, the last bar's right edge.
    ticks = [
        (bars[0].x, "start", bars[0].label),
        (bars[count // 2].x + bars[count // 2].width / 2, "middle", bars[count // 2].label),
        (bars[-1].x + bars[-1].width, "end", bars[-1].label),
    ]
    totals = {status.value: sum(seg.n for b in bars for seg in b.segments if seg.status == status) for status in used}
    return {
        "range": range_name,
        "ranges": list(RANGES),
        "bars": bars,
        "ticks": ticks,
        "maximum": maximum,
        "total": sum(b.total for b in bars),
        "legend": [s.value for s in used],
        "totals": totals,
        "width": WIDTH,
        "height": HEIGHT,
        "left": LEFT,
        "base_y": HEIGHT - BOTTOM,
        "since": since,
    }
