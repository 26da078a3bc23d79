"""A load run's report: the figures as text, as JSON, and as one HTML page.

``LoadReport`` holds what the run was (settings, the target's ``/version``),
what it measured (``RunResult``) and the client's own ceiling (the same
requests against a no-op server). ``as_json`` is the machine form;
``as_text`` and ``as_html`` render it. The HTML page is self-contained: its
charts are inline SVG, it loads nothing (no scripts, styles or fonts from
elsewhere).

The ceiling rule: the client must not be what limits a reported figure, so
``client_limited`` is true when the ceiling is under ``CEILING_FACTOR`` times
the reported rate, and every rendering says so.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any

from federation_presence.loadtest.runner import RunResult, percentile

CEILING_FACTOR = 3.0
_WIDTH, _HEIGHT, _PAD = 720, 220, 44


@dataclass
class LoadReport:
    target: str
    server_name: str
    version: dict[str, Any]
    settings: dict[str, Any]
    pushes_per_txn: int
    result: RunResult
    ceiling_txn_per_s: float | None = None
    load_average: tuple[float, float, float] | None = None
    notes: list[str] = field(default_factory=list)
    origin_names: list[str] = field(default_factory=list)  # not in the JSON: can be many

    @property
    def txn_per_s(self) -> float:
        return self.result.ok / self.result.elapsed_s if self.result.elapsed_s else 0.0

    @property
    def client_limited(self) -> bool | None:
        if self.ceiling_txn_per_s is None:
            return None
        return self.ceiling_txn_per_s < CEILING_FACTOR * self.txn_per_s

    def as_json(self) -> dict[str, Any]:
        result = self.result
        return {
            "target": self.target,
            "server_name": self.server_name,
            "version": self.version,
            "settings": self.settings,
            "elapsed_s": round(result.elapsed_s, 3),
            "transactions_ok": result.ok,
            "txn_per_s": round(self.txn_per_s, 1),
            "pushes_per_s": round(self.txn_per_s * self.pushes_per_txn, 1),
            "p50_ms": round(result.percentile_ms(0.5), 2),
            "p90_ms": round(result.percentile_ms(0.9), 2),
            "p99_ms": round(result.percentile_ms(0.99), 2),
            "max_ms": round(max(result.latencies_ms, default=0.0), 2),
            "mean_ms": round(result.mean_ms, 2),
            "send_lag_mean_ms": round(
                sum(result.send_lag_ms) / len(result.send_lag_ms) if result.send_lag_ms else 0.0, 2
            ),
            "send_lag_p50_ms": round(percentile(result.send_lag_ms, 0.5), 2),
            "send_lag_p99_ms": round(percentile(result.send_lag_ms, 0.99), 2),
            "statuses": {str(k): v for k, v in sorted(result.statuses.items())},
            "throttled_429": result.throttled,
            "retry_after_ms_total": result.retry_after_ms_total,
            "errors": dict(result.errors),
            "ceiling_txn_per_s": (
                None if self.ceiling_txn_per_s is None else round(self.ceiling_txn_per_s, 1)
            ),
            "client_limited": self.client_limited,
            "load_average": self.load_average,
            "timeline": [
                {
                    "second": second,
                    "ok": bucket.ok,
                    "other": bucket.other,
                    "throttled": bucket.throttled,
                    "errors": bucket.errors,
                    "p50_ms": round(percentile(bucket.latencies_ms, 0.5), 2),
                    "p99_ms": round(percentile(bucket.latencies_ms, 0.99), 2),
                }
                for second, bucket in enumerate(result.timeline)
            ],
            "notes": self.notes,
        }

    def as_text(self) -> str:
        data = self.as_json()
        version = self.version.get("server", {})
        lag = (
            f"; sent after it was due (open loop): p50 {data['send_lag_p50_ms']} ms, "
            f"p99 {data['send_lag_p99_ms']} ms"
            if self.result.send_lag_ms
            else ""
        )
        lines = [
            f"target {self.target} ({self.server_name}: "
            f"{version.get('name', '?')} {version.get('version', '?')})",
            "settings: " + ", ".join(f"{k}={v}" for k, v in self.settings.items()),
            f"{data['transactions_ok']:,} transactions answered 200 in {data['elapsed_s']} s: "
            f"{data['txn_per_s']:,.1f} txn/s, {data['pushes_per_s']:,.1f} pushes/s",
            f"latency p50 {data['p50_ms']} ms, p90 {data['p90_ms']} ms, "
            f"p99 {data['p99_ms']} ms, max {data['max_ms']} ms{lag}",
            f"statuses {data['statuses']}; 429s honoured: {data['throttled_429']} "
            f"(waited {data['retry_after_ms_total']} ms in all); errors {data['errors'] or 'none'}",
            self._ceiling_line(),
        ]
        if self.load_average is not None:
            one, five, fifteen = self.load_average
            lines.append(f"machine load average (1/5/15 min): {one:.2f} {five:.2f} {fifteen:.2f}")
        lines.extend(f"note: {note}" for note in self.notes)
        return "\n".join(lines)

    def _ceiling_line(self) -> str:
        if self.ceiling_txn_per_s is None:
            return "client ceiling: not measured (--no-ceiling)"
        ratio = self.ceiling_txn_per_s / self.txn_per_s if self.txn_per_s else float("inf")
        verdict = (
            f"CLIENT-LIMITED: the ceiling is under {CEILING_FACTOR:.0f}x the rate; "
            "the figure above may be the client's, not the target's"
            if self.client_limited
            else f"the client is not the limit (>= {CEILING_FACTOR:.0f}x)"
        )
        return (
            f"client ceiling (same requests, no-op server): {self.ceiling_txn_per_s:,.1f} txn/s, "
            f"{ratio:,.1f}x the rate: {verdict}"
        )

    def as_html(self) -> str:
        data = self.as_json()
        timeline = data["timeline"]
        throughput = [float(b["ok"]) for b in timeline]
        p50 = [float(b["p50_ms"]) for b in timeline]
        p99 = [float(b["p99_ms"]) for b in timeline]
        rows = "".join(
            f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
            for k, v in [
                *self.settings.items(),
                ("target", self.target),
                ("server name", self.server_name),
                ("target /version", self.version),
                ("load average", self.load_average),
            ]
        )
        summary = html.escape(self.as_text())
        return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>federation-presence loadtest: {html.escape(self.target)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 60em; }}
table {{ border-collapse: collapse; }} th, td {{ border: 1px solid #ccc; padding: 2px 8px; }}
th {{ text-align: left; }} pre {{ background: #f4f4f4; padding: 1em; white-space: pre-wrap; }}
</style></head><body>
<h1>Load test of {html.escape(self.target)}</h1>
<pre>{summary}</pre>
<h2>Throughput (200s per second)</h2>
{svg_chart([("transactions/s", "#1f77b4", throughput)], "txn/s")}
<h2>Latency of the 200s, per second</h2>
{svg_chart([("p50", "#2ca02c", p50), ("p99", "#d62728", p99)], "ms")}
<h2>Settings</h2>
<table>{rows}</table>
</body></html>
"""


def svg_chart(series: list[tuple[str, str, list[float]]], unit: str) -> str:
    """An inline SVG line chart: x = second of the run, one polyline per series."""
    points = max((len(values) for _, _, values in series), default=0)
    top = max((max(values, default=0.0) for _, _, values in series), default=0.0) or 1.0
    width, height = _WIDTH - 2 * _PAD, _HEIGHT - 2 * _PAD

    def xy(index: int, value: float) -> str:
        x = _PAD + (index / max(points - 1, 1)) * width
        y = _PAD + height - (value / top) * height
        return f"{x:.1f},{y:.1f}"

    lines = [
        f'<polyline fill="none" stroke="{colour}" stroke-width="2" '
        f'points="{" ".join(xy(i, v) for i, v in enumerate(values))}"/>'
        for _, colour, values in series
    ]
    legend = [
        f'<text x="{_PAD + 120 * i}" y="{_PAD - 12}" fill="{colour}">{html.escape(name)}</text>'
        for i, (name, colour, _) in enumerate(series)
    ]
    axes = (
        f'<line x1="{_PAD}" y1="{_PAD + height}" x2="{_PAD + width}" y2="{_PAD + height}" '
        'stroke="#888"/>'
        f'<line x1="{_PAD}" y1="{_PAD}" x2="{_PAD}" y2="{_PAD + height}" stroke="#888"/>'
        f'<text x="4" y="{_PAD + 4}" font-size="11">{top:,.0f} {html.escape(unit)}</text>'
        f'<text x="4" y="{_PAD + height}" font-size="11">0</text>'
        f'<text x="{_PAD + width - 60}" y="{_HEIGHT - 8}" font-size="11">{points} s</text>'
    )
    return (
        f'<svg width="{_WIDTH}" height="{_HEIGHT}" '
        f'viewBox="0 0 {_WIDTH} {_HEIGHT}" role="img">{axes}{"".join(lines)}'
        f"{''.join(legend)}</svg>"
    )
