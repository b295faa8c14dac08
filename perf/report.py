#!/usr/bin/env python3
"""Turn the raw records of one perf/run into the results Markdown and JSON.

Input: meta.json (machine, commit, settings) and raw.jsonl, one record per run:
  {"round": 1, "scenario": "loopback64", "impl": "vduse-net"|"dpdk"|"floor",
   "status": "ok"|"error"|"not available", "cmd": "...", "result": {...},
   "error": "..."}
For every scenario and round where both sides ran, ratio = vduse-net / DPDK of
the scenario's main figure; the summary is the median of those ratios.
Beside it, each side's busy cycles per frame (`device_cycles_per_frame`:
vduse-net's poll thread, or testpmd's vhost side with --record-core-cycles;
`generator_cycles_per_frame`: pktgen, or the virtio-user testpmd).
"""

import argparse
import json
import statistics
import sys

# scenario -> (title, main metric label, unit, higher is better)
SCENARIOS = {
    "loopback64": ("loopback, 64 B frames", "Mpps looped back", "Mpps", True),
    "loopback1518": ("loopback, 1518 B frames", "Mpps looped back", "Mpps", True),
    "txonly": ("driver TX only (device drops), 64 B", "Mpps driver -> device", "Mpps", True),
    "rxonly": ("driver RX only (device generates), 64 B", "Mpps device -> driver", "Mpps", True),
    "pingpong": ("ping-pong, one 64 B frame in flight", "round trip", "ns", False),
}


def main_figure(scenario, impl, r):
    """(value, note) of the scenario's main figure from one run's JSON."""
    if scenario == "pingpong":
        if impl == "dpdk":
            return r.get("rtt_ns"), "mean (1 / round trips per s)"
        for key, note in (("mean_ns", "mean"), ("p50_ns", "p50")):
            if r.get(key) is not None:
                return r[key], note
        return None, "no mean_ns/p50_ns"
    key = "mpps_tx" if scenario == "txonly" else "mpps_rx"
    return r.get(key), key


def fmt(v, unit):
    if v is None:
        return "-"
    if unit == "ns":
        return f"{v:.0f}"
    return f"{v:.3f}"


def summary(values):
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals)}


def build(meta, records):
    rounds = sorted({r["round"] for r in records})
    scen_names = [s for s in meta["settings"]["scenarios"] if s in SCENARIOS]
    out = {"meta": meta, "scenarios": {}, "floor": None, "runs": records}

    for s in scen_names:
        title, label, unit, higher = SCENARIOS[s]
        per_round = []
        notes = {}
        statuses = {"vduse-net": set(), "dpdk": set()}
        for rd in rounds:
            row = {"round": rd}
            for impl in ("vduse-net", "dpdk"):
                rec = next((r for r in records if r["round"] == rd and r["scenario"] == s and r["impl"] == impl), None)
                val = None
                if rec is None:
                    statuses[impl].add("not run")
                elif rec["status"] != "ok":
                    statuses[impl].add(rec["status"])
                else:
                    val, note = main_figure(s, impl, rec["result"])
                    notes[impl] = note
                    statuses[impl].add("ok" if val is not None else "no figure")
                row[impl] = val
            v, d = row["vduse-net"], row["dpdk"]
            row["ratio"] = v / d if v is not None and d else None
            for impl in ("vduse-net", "dpdk"):
                rec = next((r for r in records if r["round"] == rd and r["scenario"] == s and r["impl"] == impl), None)
                res = (rec or {}).get("result") or {} if rec and rec["status"] == "ok" else {}
                row[f"{impl}_device_cpf"] = res.get("device_cycles_per_frame")
                row[f"{impl}_generator_cpf"] = res.get("generator_cycles_per_frame")
                row[f"{impl}_device_cpf_excl_long"] = res.get("device_cycles_per_frame_excl_long")
            vc, dc = row["vduse-net_device_cpf"], row["dpdk_device_cpf"]
            row["cycles_ratio"] = vc / dc if vc is not None and dc else None
            per_round.append(row)
        out["scenarios"][s] = {
            "title": title,
            "metric": label,
            "unit": unit,
            "higher_is_better": higher,
            "figure_notes": notes,
            "status": {k: sorted(v) for k, v in statuses.items()},
            "rounds": per_round,
            "vduse-net": summary([r["vduse-net"] for r in per_round]),
            "dpdk": summary([r["dpdk"] for r in per_round]),
            "ratio": summary([r["ratio"] for r in per_round]),
            "cycles": {
                k: summary([r[k] for r in per_round])
                for k in ("vduse-net_device_cpf", "dpdk_device_cpf", "cycles_ratio", "vduse-net_device_cpf_excl_long",
                          "vduse-net_generator_cpf", "dpdk_generator_cpf")
            },
        }

    floor = [r for r in records if r["impl"] == "floor"]
    if floor:
        ok = [r["result"] for r in floor if r["status"] == "ok"]
        out["floor"] = {
            "status": sorted({r["status"] for r in floor}),
            "p50_ns": summary([r.get("p50_ns") for r in ok]),
            "min_ns": summary([r.get("min_ns") for r in ok]),
            "p99_ns": summary([r.get("p99_ns") for r in ok]),
            "rounds": [{"round": r["round"], **(r["result"] or {})} for r in floor if r["status"] == "ok"],
        }
    return out


def status_text(st):
    bad = [s for s in st if s != "ok"]
    return "; ".join(bad)


def markdown(rep):
    m = rep["meta"]
    st = m["settings"]
    lines = []
    lines.append(f"# vduse-net vs DPDK testpmd: {m['date']}")
    lines.append("")
    lines.append(f"- commit: `{m['commit']}`{' (dirty tree)' if m.get('dirty') else ''}")
    lines.append(f"- machine: {m['cpu_model']}, {m['cores']} cores, kernel {m['kernel']}")
    lines.append(f"- DPDK: {m.get('dpdk_version', '?')}; rustc: {m.get('rustc', '?')}")
    lines.append(f"- load average before / after: {m.get('load_before', '?')} / {m.get('load_after', '?')}")
    lines.append(
        f"- {st['rounds']} rounds x {st['duration']} s per run, vduse-net and DPDK alternating (A B A B); "
        f"device core {st['device_core']}, driver core {st['gen_core']}; "
        f"pktgen --check {st.get('check', 'full')}"
    )
    lines.append("")
    lines.append("Ratio = vduse-net / DPDK per round (same round, back to back), then the median over rounds.")
    lines.append("For Mpps a ratio above 1 means vduse-net is faster; for round trip time, below 1.")
    lines.append("")
    lines.append("| scenario | figure | vduse-net median (min-max) | DPDK median (min-max) | ratio per round | median ratio |")
    lines.append("|---|---|---|---|---|---|")
    for s, sc in rep["scenarios"].items():
        unit = sc["unit"]

        def cell(impl):
            sm = sc[impl]
            if sm is None:
                return status_text(sc["status"][impl]) or "n/a"
            return f"{fmt(sm['median'], unit)} ({fmt(sm['min'], unit)}-{fmt(sm['max'], unit)})"

        ratios = ", ".join("-" if r["ratio"] is None else f"{r['ratio']:.2f}" for r in sc["rounds"])
        med = "-" if sc["ratio"] is None else f"**{sc['ratio']['median']:.2f}**"
        lines.append(f"| {sc['title']} | {sc['metric']} ({unit}) | {cell('vduse-net')} | {cell('dpdk')} | {ratios} | {med} |")
    lines.append("")

    lines.append("## Busy cycles per frame")
    lines.append("")
    lines.append("testpmd's `--record-core-cycles` definition on both sides: TSC cycles of poll-loop iterations"
                 " that moved frames, over the frames moved. Device = vduse-net's poll thread"
                 " (`device_cycles_per_frame`) vs testpmd's vhost side; generator = `vduse-net pktgen`/`latency`"
                 " vs the virtio-user testpmd. Medians over rounds (min-max); ratio = vduse-net / DPDK device"
                 " cycles per round, then the median (below 1: vduse-net's device spends fewer cycles per frame).")
    lines.append("")
    lines.append("vduse-net's figure without iterations over 50 µs (mostly preemption on a shared machine; testpmd"
                 " has no such figure) is in the last column.")
    lines.append("")
    lines.append("| scenario | vduse-net device | DPDK vhost | device ratio | vduse-net generator | DPDK virtio-user"
                 " | vduse-net device excl. long |")
    lines.append("|---|---|---|---|---|---|---|")
    for s, sc in rep["scenarios"].items():
        cy = sc.get("cycles") or {}

        def cc(k):
            sm = cy.get(k)
            return "-" if sm is None else f"{sm['median']:.0f} ({sm['min']:.0f}-{sm['max']:.0f})"

        ratio = cy.get("cycles_ratio")
        lines.append(
            f"| {sc['title']} | {cc('vduse-net_device_cpf')} | {cc('dpdk_device_cpf')} | "
            f"{'-' if ratio is None else format(ratio['median'], '.2f')} | {cc('vduse-net_generator_cpf')} | "
            f"{cc('dpdk_generator_cpf')} | {cc('vduse-net_device_cpf_excl_long')} |"
        )
    lines.append("")

    fl = rep.get("floor")
    lines.append("## Floor: cache-line round trip between the two cores")
    lines.append("")
    if not fl or not fl["rounds"]:
        why = "; ".join(fl["status"]) if fl else "not run"
        lines.append(f"`vduse-net floor`: {why}.")
    else:
        lines.append("| round | min ns | p50 ns | p99 ns |")
        lines.append("|---|---|---|---|")
        for r in fl["rounds"]:
            lines.append(f"| {r['round']} | {fmt(r.get('min_ns'), 'ns')} | {fmt(r.get('p50_ns'), 'ns')} | {fmt(r.get('p99_ns'), 'ns')} |")
        if fl["p50_ns"]:
            lines.append("")
            lines.append(f"Median p50: {fmt(fl['p50_ns']['median'], 'ns')} ns. A frame's round trip through the rings"
                         " needs at least one line to cross each way (in practice several), so no RTT row can go"
                         " below this floor.")
    lines.append("")

    lines.append("## Every run")
    lines.append("")
    lines.append("| round | scenario | impl | status | Mpps tx | Mpps rx | Gbit/s tx | Gbit/s rx | RTT / latency ns | lost | integrity errors |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rep["runs"]:
        if r["impl"] == "floor":
            continue
        res = r.get("result") or {}
        if r["status"] != "ok":
            err = (r.get("error") or "").splitlines()
            note = r["status"] + (f": {err[0][:80]}" if err else "")
            lines.append(f"| {r['round']} | {r['scenario']} | {r['impl']} | {note} | | | | | | | |")
            continue
        lat = res.get("rtt_ns")
        if lat is None and res.get("p50_ns") is not None:
            lat = res["p50_ns"]
            lat_txt = f"p50 {lat:.0f}, p99 {res.get('p99_ns', 0):.0f}"
        else:
            lat_txt = fmt(lat, "ns")
        lines.append(
            f"| {r['round']} | {r['scenario']} | {r['impl']} | ok | {fmt(res.get('mpps_tx'), 'M')} | "
            f"{fmt(res.get('mpps_rx'), 'M')} | {fmt(res.get('gbps_tx'), 'G')} | {fmt(res.get('gbps_rx'), 'G')} | "
            f"{lat_txt} | {res.get('lost', '-')} | {res.get('integrity_errors', '-')} |"
        )
    lines.append("")
    lines.append("## Command lines")
    lines.append("")
    seen = set()
    for r in rep["runs"]:
        key = (r["scenario"], r["impl"])
        if key in seen or not r.get("cmd"):
            continue
        seen.add(key)
        lines.append(f"- {r['scenario']} / {r['impl']}:")
        for c in r["cmd"] if isinstance(r["cmd"], list) else [r["cmd"]]:
            lines.append(f"  `{c}`")
    lines.append("")
    lines.append("See perf/README.md for what each scenario measures and the caveats.")
    lines.append("")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--meta", required=True)
    ap.add_argument("--raw", required=True)
    ap.add_argument("--out-md", required=True)
    ap.add_argument("--out-json", required=True)
    args = ap.parse_args()
    with open(args.meta) as f:
        meta = json.load(f)
    records = []
    with open(args.raw) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                print(f"report.py: {args.raw}:{n}: skipped, not JSON: {e}", file=sys.stderr)
    rep = build(meta, records)
    with open(args.out_json, "w") as f:
        json.dump(rep, f, indent=2)
        f.write("\n")
    with open(args.out_md, "w") as f:
        f.write(markdown(rep))
    return 0


if __name__ == "__main__":
    sys.exit(main())
