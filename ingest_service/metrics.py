"""Prometheus text metrics for the collector, kept in process (one set per worker)."""

from __future__ import annotations

from bisect import bisect_left


class Histogram:
    def __init__(self, name: str, help_text: str, buckets: tuple[float, ...]):
        self.name = name
        self.help_text = help_text
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.buckets, value)] += 1
        self.total += value
        self.count += 1

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help_text}", f"# TYPE {self.name} histogram"]
        running = 0
        for bound, count in zip(self.buckets, self.counts, strict=False):
            running += count
            lines.append(f'{self.name}_bucket{{le="{bound}"}} {running}')
        lines.append(f'{self.name}_bucket{{le="+Inf"}} {self.count}')
        lines.append(f"{self.name}_sum {self.total}")
        lines.append(f"{self.name}_count {self.count}")
        return lines


class CollectorMetrics:
    """Counters the writer and the routes update; rendered by GET /metrics."""

    def __init__(self) -> None:
        self.events_accepted = 0
        self.events_rejected = 0
        self.requests_refused = 0  # 503: queue full or database down
        self.flush_failures = 0
        self.bot_events = 0  # dead-lettered as `bot` (PIXELPIPE_DROP_BOTS)
        self.bot_checks_skipped = 0  # past the new user agents one request may bring
        self.rate_limited = 0  # 429: over PIXELPIPE_RATE_LIMIT_PER_IP or _PER_SITE
        self.queue_rows = 0
        self.site_reloads_full = 0  # the whole `sites` table read again
        self.site_reloads_changed = 0  # only the rows a change announced
        self.flush_rows = Histogram(
            "pixelpipe_flush_rows", "Rows written per group commit (COPY + commit).",
            (1, 5, 10, 50, 100, 500, 1000, 5000),
        )
        self.flush_seconds = Histogram(
            "pixelpipe_flush_seconds", "Seconds per group commit (COPY + commit).",
            (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
        )
        self.request_events = Histogram(
            "pixelpipe_request_events", "Events per accepted request (batch size).",
            (1, 2, 5, 10, 25, 50, 100, 250, 1000),
        )

    def render(self) -> str:
        lines = []
        for name, help_text, kind, value in (
            ("pixelpipe_events_accepted_total", "Events committed to events_log.", "counter",
             self.events_accepted),
            ("pixelpipe_events_rejected_total", "Events and bodies committed to events_rejected.",
             "counter", self.events_rejected),
            ("pixelpipe_bot_events_total",
             "Events whose user agent is a known crawler's, dead-lettered as `bot`.",
             "counter", self.bot_events),
            ("pixelpipe_bot_checks_skipped_total",
             "Events kept unchecked: their request brought more new user agents than are classified.",
             "counter", self.bot_checks_skipped),
            ("pixelpipe_requests_refused_total", "Requests answered 503 (queue full or database down).",
             "counter", self.requests_refused),
            ("pixelpipe_requests_rate_limited_total",
             "Requests answered 429 (rate limits); summarised in the dead letter once a minute.",
             "counter", self.rate_limited),
            ("pixelpipe_flush_failures_total", "Group commits that failed.", "counter",
             self.flush_failures),
            ("pixelpipe_site_reloads_total",
             "Times this worker read the whole sites table (start, every 10 s, an unknown key at most once a second).",
             "counter", self.site_reloads_full),
            ("pixelpipe_site_changes_applied_total",
             "Announced changes to sites applied by reloading only the changed rows.",
             "counter", self.site_reloads_changed),
            ("pixelpipe_queue_rows", "Rows waiting for the next group commit.", "gauge",
             self.queue_rows),
        ):
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {value}"]
        for histogram in (self.request_events, self.flush_rows, self.flush_seconds):
            lines += histogram.render()
        return "\n".join(lines) + "\n"
