"""herdgate's benchmark suite: ``.venv/bin/python -m bench [--quick]``.

Runs on 127.0.0.1 only, starts and stops every process itself, and bounds each load loop
in count and time. See docs/benchmarks.md for what is measured and how.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench import framing, growth, report, suite, transfers
from bench.nginx import make_certs
from bench.watch_backend import raise_nofile
from tests.integration.env import REPO_ROOT

PHASES = ("framing", "http", "exec", "transfers", "watches", "agents")


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument(
        "--quick", action="store_true", help="a few seconds per figure, 100 agents, 1,000 watches"
    )
    p.add_argument(
        "--only", default=",".join(PHASES), help=f"comma-separated phases: {', '.join(PHASES)}"
    )
    p.add_argument("--rounds", type=int, help="interleaved rounds (full 5, quick 2)")
    p.add_argument("--seconds", type=float, help="seconds per wrk run (full 4, quick 2)")
    p.add_argument("--watches", type=int, help="concurrent watches (full 10000, quick 1000)")
    p.add_argument("--event-rate", type=float, default=1000.0, help="watch events per second")
    p.add_argument(
        "--watch-clients",
        default="h2,h1",
        help="figure 4's clients: h2 (watches sharing connections), h1 (a connection each)",
    )
    p.add_argument("--event-seconds", type=float, help="seconds of events (full 15, quick 4)")
    p.add_argument("--agents", type=int, help="agent sessions (full 1000, quick 100)")
    p.add_argument("--agent-procs", type=int, default=2, help="processes the agents share")
    p.add_argument("--agent-steps", default="",
                   help="agent counts below --agents at which the gateway's idle RSS and"
                        " CPU are also read (the growth curve), e.g. 1000,2500,5000")  # fmt: skip
    p.add_argument("--agents-png", type=Path,
                   help="PNG: idle RSS and CPU against tunnels (bench.growth)")  # fmt: skip
    p.add_argument("--idle", type=float, help="seconds of idle CPU measurement (full 30, quick 5)")
    p.add_argument(
        "--transfer-mb", type=float, help="kubectl cp and port-forward size (full 1000, quick 100)"
    )
    p.add_argument(
        "--transfer-rounds", type=int, default=1, help="interleaved rounds of the transfers"
    )
    p.add_argument(
        "--transfer-kubectl",
        metavar="1.NN",
        help="kubectl.1.NN for the transfers (default: the one on PATH; 1.27-1.29: SPDY)",
    )
    p.add_argument("--profile", type=float, default=0.0, metavar="S",
                   help="py-spy the gateway for S seconds of a 64-connection run"
                   " (and gateway and agent during a port-forward in transfers)")  # fmt: skip
    p.add_argument(
        "--baseline",
        metavar="REV",
        help="also run herdgate at this git revision as a fourth path (A/B)",
    )
    p.add_argument("--json", type=Path, help="also write every raw figure here")
    p.add_argument("--markdown", type=Path, help="also write the report here")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs, configs)")
    p.add_argument("--env", action="append", default=[], metavar="HERDGATE_X=V",
                   help="setting for every gateway and agent started (experiments)")  # fmt: skip
    args = p.parse_args(argv)
    quick = args.quick
    defaults = {
        "rounds": 2 if quick else 5,
        "seconds": 2.0 if quick else 4.0,
        "watches": 1000 if quick else 10_000,
        "event_seconds": 4.0 if quick else 15.0,
        "agents": 100 if quick else 1000,
        "idle": 5.0 if quick else 30.0,
        "transfer_mb": 100.0 if quick else 1000.0,
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for item in args.env:
        name, sep, _ = item.partition("=")
        if not sep or not name.startswith("HERDGATE_"):
            p.error(f"--env wants HERDGATE_NAME=VALUE, not {item!r}")
    args.phases = [x.strip() for x in args.only.split(",") if x.strip()]
    unknown = set(args.phases) - set(PHASES)
    if unknown:
        p.error(f"unknown phases: {', '.join(sorted(unknown))}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    raise_nofile()
    for item in args.env:
        name, _, value = item.partition("=")
        os.environ[name] = value  # inherited by every gateway and agent this run starts
    started = time.monotonic()
    stamp = dt.datetime.now().astimezone()
    tmp = suite.setup_tmp(None)

    def log(message: str) -> None:
        print(f"[{time.monotonic() - started:6.1f} s] {message}", flush=True)

    log(f"work dir {tmp}")
    certs = make_certs(tmp / "certs")
    raw: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}}
    sections: list[str] = []
    checks: list[report.Check] = []
    foreign: list[float] = []
    try:
        if "framing" in args.phases:
            log("framing micro-benchmark")
            fr = framing.run(1.5 if args.quick else 4.5)
            raw["framing"] = suite.to_json(fr)
            sections += ["### Framing micro-benchmark", "", *report.framing_lines(fr), ""]
        if "http" in args.phases:
            log(
                f"figures 1-3: {args.rounds} rounds x 4 scenarios x 3 paths,"
                f" {args.seconds:g} s each"
            )
            baseline = None
            if args.baseline:
                baseline = suite.checkout(REPO_ROOT, args.baseline, tmp / "baseline-src")
                log(f"baseline: herdgate at {args.baseline} ({baseline.commit}) as a fourth path")
            try:
                http = suite.http_paths(
                    tmp, certs, args.rounds, args.seconds, args.profile, log, baseline
                )
            finally:
                if baseline is not None:
                    baseline.remove()
            raw["http"] = http.rounds.to_json()
            foreign += [r.foreign_pct for r in http.rounds.runs]
            lines, found = report.http_table(http)
            checks += found
            if baseline is not None:
                lines += ["", *report.baseline_lines(http, baseline.commit)]
            sections += ["### Figures 1-3: 2 KB GET and the 100 MB list", "", *lines, "",
                         "CPU per process, median over rounds (% of one core · CPU per request"
                         " or per MB):", "", *report.cpu_table(http), ""]  # fmt: skip
            for name, prof in http.profile.items():
                raw.setdefault("profile", {})[name] = prof
                sections += [
                    f"py-spy, {name} (herdgate path), % of samples (self: on top of the stack;"
                    " incl: anywhere in it, herdgate code only):",
                    "",
                    *(f"- {pct:5.1f} %  `{fn}`" for fn, pct in prof),
                    "",
                ]
        if "exec" in args.phases:
            log("exec sessions: direct and through herdgate")
            ex = suite.exec_paths(
                tmp, certs, 2 if args.quick else 3, 30 if args.quick else 100,
                500 if args.quick else 2000, 50.0 if args.quick else 200.0, log,
            )  # fmt: skip
            raw["exec"] = suite.to_json(ex)
            lines, found = report.exec_lines(ex)
            checks += found
            sections += ["### Exec sessions", "", *lines, ""]
        if "transfers" in args.phases:
            log(f"kubectl cp and port-forward, {args.transfer_mb:g} MB: direct and herdgate")
            tr = transfers.run(
                tmp, certs, args.transfer_rounds, args.transfer_mb, log, suite.start_herd,
                args.profile, args.transfer_kubectl,
            )  # fmt: skip
            raw["transfers"] = suite.to_json(tr)
            foreign += [cpu["other"] for r in tr.runs for cpu in r["cpu"].values()]
            lines, found = report.transfers_lines(tr)
            checks += found
            sections += ["### kubectl cp and port-forward", "", *lines, ""]
            for name, prof in tr.profile.items():
                sections += [
                    f"py-spy, {name}, during a port-forward through herdgate, % of samples:",
                    "",
                    *(f"- {pct:5.1f} %  `{fn}`" for fn, pct in prof),
                    "",
                ]
        if "watches" in args.phases:
            log(f"figure 4: {args.watches:,} watches, {args.event_rate:g} events/s")
            sections += ["### Figure 4: watches through one tunnel", ""]
            modes = [m.strip() for m in args.watch_clients.split(",")]
            for http2 in [m == "h2" for m in ("h2", "h1") if m in modes]:
                # client-go's way first, then a connection each
                w = suite.watches(
                    tmp, certs, args.watches, args.event_rate, args.event_seconds, log, http2
                )
                raw["watches-h2" if http2 else "watches"] = suite.to_json(w)
                foreign.append(w.cpu_pct["other"])
                lines, found = report.watch_lines(w)
                checks += found
                sections += [*lines, ""]
        if "agents" in args.phases:
            log(f"figures 5-6: {args.agents:,} agents in {args.agent_procs} processes")
            steps = [int(x) for x in args.agent_steps.split(",") if x.strip()]
            a = suite.agents(tmp, certs, args.agents, args.agent_procs, args.idle, log, steps)
            raw["agents"] = suite.to_json(a)
            foreign.append(a.idle_cpu_pct["other"])
            if args.agents_png:
                growth.plot(raw["agents"], args.agents_png)
            lines, found = report.agents_lines(a)
            checks += found
            sections += ["### Figures 5-6: idle tunnels and a gateway restart", "", *lines, ""]
    finally:
        if args.json:
            args.json.write_text(json.dumps(raw, indent=1, default=str))
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    load = statistics.median(foreign) if foreign else 0.0
    header = _header(stamp, args, time.monotonic() - started, load)
    text = "\n".join([*header, "", "### Targets", "", *report.checks_table(checks), "", *sections])
    print("\n" + text)
    if args.markdown:
        args.markdown.write_text(text + "\n")
    return 0


def _header(
    stamp: dt.datetime, args: argparse.Namespace, took_s: float, foreign_pct: float
) -> list[str]:
    m = report.machine()
    v = report.versions(REPO_ROOT)
    command = ".venv/bin/python -m bench " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    other = (
        f"**other load present**: median {foreign_pct:.0f} % of a core used by processes outside"
        " the benchmark while it measured"
        if foreign_pct >= 5
        else f"no significant other load (median {foreign_pct:.0f} % of a core outside the"
        " benchmark)"
    )
    return [
        f"## Run of {stamp:%Y-%m-%d %H:%M %Z}"
        f" ({'quick' if args.quick else 'full'} mode, {took_s / 60:.1f} min)",
        "",
        f"- Command: `{command.strip()}`",
        f"- Machine: {m['cpu']}, {m['cores']} cores, {m['ram']} RAM,"
        f" kernel {m['kernel']}, {m['os']}",
        "- Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
        f"- Load: {other}.",
        *([f"- Settings changed for this run: `{' '.join(args.env)}`"] if args.env else []),
    ]


if __name__ == "__main__":
    sys.exit(main())
