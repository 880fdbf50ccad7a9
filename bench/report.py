"""Results: rows with median and min-max over repeats, latest.json, a Markdown table, PNG charts."""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Target:
    text: str  # "≥ 0.7 x nginx"
    met: bool


@dataclass
class Row:
    """One measured quantity of one system, over all repeats."""

    scenario: str
    system: str  # direct | nginx | wakegate
    metric: str
    unit: str
    values: list[float]
    median: float = 0.0
    min: float = 0.0
    max: float = 0.0
    vs_nginx: float | None = None  # median / nginx's median of the same metric
    vs_direct: float | None = None
    target: Target | None = None

    def __post_init__(self) -> None:
        if not self.values:
            raise ValueError(f"{self.scenario}/{self.system}/{self.metric}: no values")
        self.median = float(statistics.median(self.values))
        self.min, self.max = float(min(self.values)), float(max(self.values))


@dataclass
class ScenarioResult:
    name: str
    title: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0

    def add(self, system: str, metric: str, unit: str, values: Sequence[float], target: Target | None = None) -> Row:
        row = Row(self.name, system, metric, unit, [float(v) for v in values], target=target)
        self.rows.append(row)
        return row

    def find(self, system: str, metric: str) -> Row | None:
        return next((r for r in self.rows if r.system == system and r.metric == metric), None)

    def compare(self, metric: str) -> None:
        """Fill ``vs_nginx`` / ``vs_direct`` for every system's row of ``metric``."""
        nginx, direct = self.find("nginx", metric), self.find("direct", metric)
        for row in self.rows:
            if row.metric != metric:
                continue
            if nginx is not None and nginx.median and row.system != "nginx":
                row.vs_nginx = row.median / nginx.median
            if direct is not None and direct.median and row.system != "direct":
                row.vs_direct = row.median / direct.median


def to_json(results: Sequence[ScenarioResult], meta: dict[str, Any]) -> dict[str, Any]:
    return {**meta, "scenarios": {r.name: asdict(r) for r in results}}


def from_json(doc: dict[str, Any]) -> list[ScenarioResult]:
    """The results of a latest.json, for drawing its table and charts again."""
    out = []
    for name, r in doc["scenarios"].items():
        rows = [Row(row["scenario"], row["system"], row["metric"], row["unit"], row["values"],
                    vs_nginx=row["vs_nginx"], vs_direct=row["vs_direct"],
                    target=Target(**row["target"]) if row["target"] else None) for row in r["rows"]]
        out.append(ScenarioResult(name, r["title"], rows, r["notes"], r["raw"], r["error"], r["seconds"]))
    return out


def subtitle(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    return f"{m['cpu']}, {m['cores_usable']} cores, {doc['started']}"


def write_json(path: Path, doc: dict[str, Any]) -> None:
    path.write_text(json.dumps(doc, indent=1, default=str) + "\n")


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    a = abs(value)
    if a >= 1000:
        return f"{value:,.0f}"
    if a >= 100:
        return f"{value:.0f}"
    if a >= 10:
        return f"{value:.1f}"
    if a >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def markdown(results: Sequence[ScenarioResult], meta: dict[str, Any]) -> str:
    """The table the README shows: one line per measured quantity, target and verdict where one applies."""
    m = meta["machine"]
    lines = [
        f"Measured {meta['started']} on {m['cpu']} ({m['cores_usable']} cores), {m['memory_gib']} GiB, "
        f"{m['os']}, kernel {m['kernel']}, Python {m['python']}, nginx {m['nginx']}, {m['wrk']}. "
        f"wakegate's data path: {m.get('wakegate_data_path', 'plain Python')}. "
        f"Load average before/after: {meta['load_before']} / {meta['load_after']}. "
        f"Repeats: {meta['config']['repeat']}, {meta['config']['duration_s']} s each"
        f"{' (smoke configuration)' if meta['config']['smoke'] else ''}. "
        f"Pinning: {meta['layout']}.",
        "",
        "| Scenario | System | Metric | Median | Min-max | x nginx | x direct | Target | Met |",
        "|---|---|---|---:|---:|---:|---:|---|---|",
    ]
    for res in results:
        if res.error:
            lines.append(f"| {res.title} | — | **did not run**: {res.error.splitlines()[0][:200]} | | | | | | |")
            continue
        for r in res.rows:
            met = "" if r.target is None else ("yes" if r.target.met else "**no**")
            lines.append(
                f"| {res.title} | {r.system} | {r.metric} | {_fmt(r.median)} {r.unit} | "
                f"{_fmt(r.min)} .. {_fmt(r.max)} | {_ratio(r.vs_nginx)} | {_ratio(r.vs_direct)} | "
                f"{r.target.text if r.target else ''} | {met} |"
            )
    notes = [(res.title, n) for res in results for n in res.notes]
    if notes:
        lines += ["", "Notes:", ""] + [f"- {title}: {' '.join(n.split())}" for title, n in notes]
    return "\n".join(lines) + "\n"


SYSTEM_COLORS = {"direct": "#8c8c8c", "nginx": "#2e7d32", "wakegate": "#1565c0"}


def charts(results: Sequence[ScenarioResult], out_dir: Path, subtitle: str) -> list[Path]:
    """throughput.png (warm req/s, req per CPU-second, streaming MB/s) and latency.png (open-loop
    p50/p99 and the added latency). Error bars span min-max over repeats."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_name = {r.name: r for r in results if not r.error}
    written: list[Path] = []

    def bars(ax: Any, rows: list[Row], title: str, unit: str) -> None:
        # Several metrics in one panel (download/upload, added p50/p99): their first word tells them apart.
        labels = [r.system if len({x.metric for x in rows}) == 1 else f"{r.system}\n{r.metric.split()[-1]}"
                  if r.metric.startswith("added") else f"{r.system}\n{r.metric.split()[0]}" for r in rows]
        medians = [r.median for r in rows]
        err = [[r.median - r.min for r in rows], [r.max - r.median for r in rows]]
        colors = [SYSTEM_COLORS.get(r.system, "#999") for r in rows]
        ax.bar(range(len(rows)), medians, yerr=err, color=colors, capsize=4)
        ax.set_xticks(range(len(rows)), labels, fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(unit)
        for i, v in enumerate(medians):
            ax.annotate(_fmt(v), (i, v), ha="center", va="bottom", fontsize=8, xytext=(0, 2),
                        textcoords="offset points")

    panels: list[tuple[list[Row], str, str]] = []
    if "throughput" in by_name:
        t = by_name["throughput"]
        panels.append(([r for r in t.rows if r.metric == "requests/s"],
                       f"Warm throughput (wrk, {t.raw.get('connections', '?')} connections, 1 KiB)", "requests/s"))
        panels.append(([r for r in t.rows if r.metric == "requests per CPU-second"],
                       "Requests per CPU-second of the proxy", "req/CPU-s"))
    if "streaming" in by_name:
        s = by_name["streaming"]
        panels.append(([r for r in s.rows if r.metric.endswith("throughput")], "Streaming 1 GiB", "MiB/s"))
    panels = [p for p in panels if p[0]]
    if panels:
        fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.2), squeeze=False)
        for ax, (rows, title, unit) in zip(axes[0], panels, strict=True):
            bars(ax, rows, title, unit)
        fig.suptitle(f"wakegate vs nginx vs direct — {subtitle}", fontsize=9)
        fig.tight_layout()
        path = out_dir / "throughput.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    if "latency" in by_name:
        lat = by_name["latency"]
        systems = [s for s in ("direct", "nginx", "wakegate") if lat.find(s, "p50") is not None]
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), squeeze=False)
        ax = axes[0][0]
        pcts = [p for p in ("p50", "p90", "p99", "p99.9") if lat.find("direct", p) is not None]
        width = 0.8 / len(pcts)
        shades = (0.35, 0.55, 0.8, 1.0)
        for j, pct in enumerate(pcts):
            present = [r for r in (lat.find(s, pct) for s in systems) if r is not None]
            xs = [i + (j - (len(pcts) - 1) / 2) * width for i in range(len(present))]
            ax.bar(xs, [r.median for r in present], width,
                   yerr=[[r.median - r.min for r in present], [r.max - r.median for r in present]],
                   color=[SYSTEM_COLORS.get(r.system, "#999") for r in present], alpha=shades[j], capsize=2)
            for x, r in zip(xs, present, strict=True):
                ax.annotate(f"{pct}\n{_fmt(r.median)}", (x, r.median), ha="center", va="bottom", fontsize=6,
                            xytext=(0, 2), textcoords="offset points")
        ax.set_yscale("log")
        ax.set_xticks(range(len(systems)), systems)
        rate = lat.raw.get("rate")
        ax.set_title(f"Latency at a fixed rate ({_fmt(rate) if rate else '?'} req/s, open loop)", fontsize=10)
        ax.set_ylabel("ms")
        added = [r for r in lat.rows if r.metric.startswith("added")]
        bars(axes[0][1], added, "Added latency vs direct (system - direct)", "ms")
        if max((abs(v) for r in added for v in (r.min, r.max)), default=0.0) > 10.0:
            axes[0][1].set_yscale("symlog", linthresh=1.0)  # spans sub-ms to seconds, may dip below zero
        fig.suptitle(f"wakegate vs nginx vs direct — {subtitle}", fontsize=9)
        fig.tight_layout()
        path = out_dir / "latency.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
