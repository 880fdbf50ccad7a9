"""``python -m bench.run``: run the benchmark scenarios, write latest.json, latest.md and charts.

    python -m bench.run                      # everything, 3 repeats (make bench)
    python -m bench.run --smoke --out DIR    # each scenario once, tiny sizes (what make test runs)
    python -m bench.run --only throughput,latency --repeat 5 --duration 20
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

from bench import report
from bench.procs import Layout, load_average, machine_info, raise_nofile
from bench.scenarios import SCENARIOS, SMOKE, Config, Context
from bench.tools import Loadgen, loadgen_command

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny configuration: each scenario once, ~1 s")
    p.add_argument("--only", default="", help=f"comma-separated scenarios ({', '.join(SCENARIOS)})")
    p.add_argument("--repeat", type=int, help="repeats per measurement (default 3; smoke 1)")
    p.add_argument("--duration", type=float, help="seconds per load run (default 10; smoke 1)")
    p.add_argument("--out", type=Path, help="results directory (default bench/results; smoke: a temp dir)")
    p.add_argument("--keep-work", action="store_true", help="keep the work directory (configs, logs)")
    p.add_argument("--replot", action="store_true",
                   help="measure nothing: draw latest.md and the charts again from the --out dir's latest.json")
    args = p.parse_args(argv)
    unknown = [n for n in args.only.split(",") if n and n not in SCENARIOS]
    if unknown:
        p.error(f"--only: unknown scenario(s) {', '.join(unknown)}; known: {', '.join(SCENARIOS)}")
    if args.repeat is not None and args.repeat < 1:
        p.error("--repeat: must be at least 1")
    if args.duration is not None and args.duration < 1:
        p.error("--duration: must be at least 1 second")
    return args


def replot(out: Path) -> int:
    doc = json.loads((out / "latest.json").read_text())
    results = report.from_json(doc)
    (out / "latest.md").write_text(report.markdown(results, doc))
    report.charts(results, out, report.subtitle(doc))
    print(f"bench: drew {out}/latest.md and charts from latest.json")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.replot:
        return replot(args.out or RESULTS)
    config = SMOKE if args.smoke else Config()
    if args.repeat is not None:
        config = dataclasses.replace(config, repeat=args.repeat)
    if args.duration is not None:
        config = dataclasses.replace(config, duration_s=args.duration)
    names = [n for n in args.only.split(",") if n] or list(SCENARIOS)
    out = args.out or (Path(tempfile.mkdtemp(prefix="wakegate-bench-smoke-")) if args.smoke else RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="wakegate-bench-"))
    logs = work / "logs"
    logs.mkdir()

    nofile = raise_nofile(65536)
    layout = Layout.detect()
    loadgen = Loadgen(loadgen_command(), layout.loadgen)
    ctx = Context(config, layout, work, logs, loadgen)
    meta: dict[str, object] = {
        "started": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_info(),
        "layout": layout.describe(),
        "config": config.describe(),
        "open_files_limit": nofile,
        "load_before": load_average(),
    }
    print(f"bench: {', '.join(names)} → {out} (work dir {work})", flush=True)
    began = time.monotonic()
    results = []
    for name in names:
        t0 = time.monotonic()
        print(f"bench: {name} …", flush=True)
        try:
            res = SCENARIOS[name](ctx)
        except Exception as exc:  # one broken scenario must not hide the others' numbers
            res = report.ScenarioResult(name, name, error=f"{type(exc).__name__}: {exc}")
            traceback.print_exc()
        res.seconds = round(time.monotonic() - t0, 1)
        results.append(res)
        status = f"failed: {res.error.splitlines()[0]}" if res.error else f"{len(res.rows)} rows"
        print(f"bench: {name} {status} ({res.seconds} s)", flush=True)
    meta["load_after"] = load_average()
    meta["seconds"] = round(time.monotonic() - began, 1)

    doc = report.to_json(results, meta)
    report.write_json(out / "latest.json", doc)
    table = report.markdown(results, doc)
    (out / "latest.md").write_text(table)
    report.charts(results, out, report.subtitle(doc))
    print(table)
    print(f"bench: wrote {out}/latest.json, latest.md and charts in {meta['seconds']} s", flush=True)
    if args.keep_work or any(r.error for r in results):
        print(f"bench: work directory (configs, logs) kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
