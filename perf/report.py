#!/usr/bin/env python3
"""Turn the raw records of one perf/run into the results Markdown and JSON.

Input: meta.json (machine, commit, settings) and raw.jsonl, one record per run:
  {"round": 1, "scenario": "loopback64", "impl": "vduse-net"|"dpdk"|"floor",
   "variant": "split"|"packed"|"in_order", "status": "ok"|"error"|"not available",
   "cmd": [...], "result": {...}, "error": "..."}
(records without "variant" are split: the suite's files before the ring arms).

Each vduse-net ring arm is paired with a DPDK arm: every vduse-net arm with
DPDK split (the reference configuration), and vduse-net packed also with DPDK
packed when that ran. For every pair, scenario and round where both sides ran,
ratio = vduse-net / DPDK of the scenario's main figure and of the device's
busy cycles per frame (`device_cycles_per_frame`: vduse-net's poll thread, or
testpmd's vhost side with --record-core-cycles); the summary is the median of
those per-round ratios. The targets of issue 14 are judged on the split/split
pair (the default feature set); the other arms are reported beside.
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
    # latency --mode fwd: the one frame is forwarded from the buffer it
    # arrived in and not read, as testpmd io's side of its ping-pong
    # (DPDK's side of this row is its pingpong, unchanged).
    "pingfwd": ("ping-pong, one 64 B frame forwarded (driver side: zero copy, as testpmd io)", "round trip", "ns",
                False),
    # pktgen --mode fwd: the driver side forwards what it receives without
    # copying and reads only each frame's header, as testpmd's io forwarding
    # (DPDK's side of these rows is its loopback pair, unchanged).
    "fwd64": ("forward, 64 B frames (driver side: zero-copy forwarding, as testpmd io)", "Mpps forwarded", "Mpps",
              True),
    "fwd1518": ("forward, 1518 B frames (driver side: zero-copy forwarding, as testpmd io)", "Mpps forwarded",
                "Mpps", True),
}

VARIANT_TEXT = {
    "split": "split (default features)",
    "packed": "packed (--ring packed)",
    "in_order": "IN_ORDER (--features +in_order)",
}

# Issue 14's targets: (key, text, threshold, comparison). Judged on the
# split/split pair; see targets().
TARGETS = [
    ("cycles64", "64 B loopback: vduse-net device cycles/frame <= 0.67x testpmd vhost cycles/packet", 0.67, "<="),
    ("mpps64", "64 B loopback end to end: Mpps >= 1.5x the DPDK pair's", 1.5, ">="),
    ("gbps1518", "1518 B loopback: Gbit/s >= 1.0x DPDK's", 1.0, ">="),
    ("cycles64_fwd", "64 B forward (pktgen --mode fwd, testpmd io's division of work): device cycles/frame <= 0.67x"
     " testpmd vhost cycles/packet", 0.67, "<="),
    ("mpps64_fwd", "64 B forward end to end: Mpps >= 1.5x the DPDK pair's", 1.5, ">="),
    ("gbps1518_fwd", "1518 B forward: Gbit/s >= 1.0x DPDK's", 1.0, ">="),
    ("rtt_dpdk", "ping-pong RTT p50 <= DPDK's (DPDK: mean, it has no per-packet times)", 1.0, "<="),
    ("rtt_floor", "ping-pong RTT p50 <= 3x the cache-line floor p50 of the same round", 3.0, "<="),
    ("rtt_dpdk_fwd", "ping-pong forwarded (latency --mode fwd, testpmd io's division of work): RTT p50 <= DPDK's",
     1.0, "<="),
    ("rtt_floor_fwd", "ping-pong forwarded: RTT p50 <= 3x the cache-line floor p50 of the same round", 3.0, "<="),
    ("clean", "zero lost frames and zero integrity errors in every vduse-net run", None, None),
]


def variant_of(rec):
    return rec.get("variant") or "split"


def main_figure(scenario, impl, r):
    """(value, note) of the scenario's main figure from one run's JSON."""
    if scenario in ("pingpong", "pingfwd"):
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


def ratio(a, b):
    return a / b if a is not None and b else None


def find(records, rd, scenario, impl, variant):
    return next(
        (r for r in records
         if r["round"] == rd and r["scenario"] == scenario and r["impl"] == impl and variant_of(r) == variant),
        None,
    )


def ok_result(rec):
    return (rec.get("result") or {}) if rec and rec["status"] == "ok" else {}


def pairs(meta, records):
    """(vduse-net variant, DPDK variant) pairs to compare, in report order."""
    st = meta["settings"]
    vv = st.get("variants") or sorted({variant_of(r) for r in records if r["impl"] == "vduse-net"}) or ["split"]
    dv = st.get("dpdk_variants") or sorted({variant_of(r) for r in records if r["impl"] == "dpdk"}) or ["split"]
    out = [(v, "split") for v in vv]
    for d in dv:
        if d == "split":
            continue
        # DPDK's other ring layout against vduse-net's same layout if it ran,
        # else against the default.
        out.append((d if d in vv else "split", d))
    return out


def arm(records, rounds, s, vvar, dvar):
    """Per-round figures of one (vduse-net arm, DPDK arm) pair in scenario s."""
    per_round = []
    notes = {}
    statuses = {"vduse-net": set(), "dpdk": set()}
    errors = {"vduse-net": set(), "dpdk": set()}
    for rd in rounds:
        row = {"round": rd}
        recs = {"vduse-net": find(records, rd, s, "vduse-net", vvar), "dpdk": find(records, rd, s, "dpdk", dvar)}
        for impl, rec in recs.items():
            val = None
            if rec is None:
                statuses[impl].add("not run")
            elif rec["status"] != "ok":
                statuses[impl].add(rec["status"])
                if rec.get("error"):
                    errors[impl].add(rec["error"].splitlines()[0][:200])
            else:
                val, note = main_figure(s, impl, rec["result"])
                notes[impl] = note
                statuses[impl].add("ok" if val is not None else "no figure")
            row[impl] = val
            res = ok_result(rec)
            row[f"{impl}_device_cpf"] = res.get("device_cycles_per_frame")
            row[f"{impl}_generator_cpf"] = res.get("generator_cycles_per_frame")
            row[f"{impl}_gbps_rx"] = res.get("gbps_rx")
        vres = ok_result(recs["vduse-net"])
        row["vduse-net_device_cpf_excl_long"] = vres.get("device_cycles_per_frame_excl_long")
        row["vduse-net_generator_cpf_excl_long"] = vres.get("generator_cycles_per_frame_excl_long")
        row["vduse-net_p50_ns"] = vres.get("p50_ns")
        row["busier"] = vres.get("busier")
        row["ratio"] = ratio(row["vduse-net"], row["dpdk"])
        row["cycles_ratio"] = ratio(row["vduse-net_device_cpf"], row["dpdk_device_cpf"])
        row["gbps_ratio"] = ratio(row["vduse-net_gbps_rx"], row["dpdk_gbps_rx"])
        per_round.append(row)
    busier = [r["busier"] for r in per_round if r["busier"]]
    return {
        "vduse_variant": vvar,
        "dpdk_variant": dvar,
        "figure_notes": notes,
        "status": {k: sorted(v) for k, v in statuses.items()},
        "errors": {k: sorted(v) for k, v in errors.items()},
        "rounds": per_round,
        "vduse-net": summary([r["vduse-net"] for r in per_round]),
        "dpdk": summary([r["dpdk"] for r in per_round]),
        "ratio": summary([r["ratio"] for r in per_round]),
        "gbps_ratio": summary([r["gbps_ratio"] for r in per_round]),
        "busier": {b: busier.count(b) for b in sorted(set(busier))},
        "cycles": {
            k: summary([r[k] for r in per_round])
            for k in ("vduse-net_device_cpf", "dpdk_device_cpf", "cycles_ratio", "vduse-net_device_cpf_excl_long",
                      "vduse-net_generator_cpf", "vduse-net_generator_cpf_excl_long", "dpdk_generator_cpf")
        },
    }


def floor_by_round(records):
    return {r["round"]: (r.get("result") or {}).get("p50_ns")
            for r in records if r["impl"] == "floor" and r["status"] == "ok"}


def judge(value, threshold, op):
    if value is None:
        return "no data"
    ok = value <= threshold if op == "<=" else value >= threshold
    return "met" if ok else "short"


def targets(rep, records, vvar, dvar="split"):
    """Issue 14's targets for one vduse-net arm against one DPDK arm: per
    target the measured medians, the median of the per-round ratios and
    met/short (or "no data" when a scenario did not run)."""
    sc = rep["scenarios"]

    def arm_of(s):
        for a in (sc.get(s) or {}).get("arms", []):
            if a["vduse_variant"] == vvar and a["dpdk_variant"] == dvar:
                return a
        return None

    def med(a, key):
        sm = a and (a["cycles"].get(key) if key in a["cycles"] else a.get(key))
        return sm and sm["median"]

    out = {}
    # The same three rate targets on pktgen's loopback and fwd scenarios.
    for sfx, s64, s1518 in (("", "loopback64", "loopback1518"), ("_fwd", "fwd64", "fwd1518")):
        a = arm_of(s64)
        r = a and a["cycles"]["cycles_ratio"]
        out["cycles64" + sfx] = {"vduse-net": med(a, "vduse-net_device_cpf"), "dpdk": med(a, "dpdk_device_cpf"),
                                 "unit": "cycles/frame", "ratio": r and r["median"]}
        r = a and a["ratio"]
        out["mpps64" + sfx] = {"vduse-net": med(a, "vduse-net"), "dpdk": med(a, "dpdk"), "unit": "Mpps",
                               "ratio": r and r["median"]}
        a = arm_of(s1518)
        r = a and a["gbps_ratio"]
        out["gbps1518" + sfx] = {
            "vduse-net": a and (summary([x["vduse-net_gbps_rx"] for x in a["rounds"]]) or {}).get("median"),
            "dpdk": a and (summary([x["dpdk_gbps_rx"] for x in a["rounds"]]) or {}).get("median"),
            "unit": "Gbit/s", "ratio": r and r["median"]}
    floors = floor_by_round(records)
    # The same two round-trip targets on the plain and the forwarded ping-pong.
    for sfx, s in (("", "pingpong"), ("_fwd", "pingfwd")):
        a = arm_of(s)
        p50 = [x["vduse-net_p50_ns"] for x in a["rounds"]] if a else []
        dp = [x["dpdk"] for x in a["rounds"]] if a else []
        sm = summary([ratio(p, d) for p, d in zip(p50, dp)])
        out["rtt_dpdk" + sfx] = {"vduse-net": (summary(p50) or {}).get("median"),
                                 "dpdk": (summary(dp) or {}).get("median"), "unit": "ns", "ratio": sm and sm["median"]}
        fl = [floors.get(x["round"]) for x in a["rounds"]] if a else []
        sm = summary([ratio(p, f) for p, f in zip(p50, fl)])
        out["rtt_floor" + sfx] = {"vduse-net": (summary(p50) or {}).get("median"),
                                  "floor": (summary(fl) or {}).get("median"), "unit": "ns",
                                  "ratio": sm and sm["median"]}
    runs = [r for r in records if r["impl"] == "vduse-net" and variant_of(r) == vvar]
    ok = [r["result"] for r in runs if r["status"] == "ok" and r.get("result")]
    failed = [r for r in runs if r["status"] == "error"]
    lost = sum(int(x.get("lost") or 0) for x in ok)
    integ = sum(int(x.get("integrity_errors") or 0) for x in ok)
    dup = sum(int(x.get("duplicates_or_reordered") or 0) for x in ok)
    out["clean"] = {"runs": len(ok), "failed": len(failed), "lost": lost, "integrity_errors": integ,
                    "duplicates_or_reordered": dup}
    for key, _text, thr, op in TARGETS:
        t = out[key]
        if key == "clean":
            t["verdict"] = "no data" if not ok else ("met" if lost == integ == dup == 0 and not failed else "short")
        else:
            t["verdict"] = judge(t["ratio"], thr, op)
    return out


def build(meta, records):
    rounds = sorted({r["round"] for r in records})
    scen_names = [s for s in meta["settings"]["scenarios"] if s in SCENARIOS]
    out = {"meta": meta, "scenarios": {}, "floor": None, "targets": {}, "runs": records}
    prs = pairs(meta, records)

    for s in scen_names:
        title, label, unit, higher = SCENARIOS[s]
        out["scenarios"][s] = {
            "title": title,
            "metric": label,
            "unit": unit,
            "higher_is_better": higher,
            "arms": [arm(records, rounds, s, v, d) for v, d in prs],
        }

    floor = [r for r in records if r["impl"] == "floor"]
    if floor:
        ok = [r["result"] for r in floor if r["status"] == "ok" and r.get("result")]
        out["floor"] = {
            "status": sorted({r["status"] for r in floor}),
            "p50_ns": summary([r.get("p50_ns") for r in ok]),
            "min_ns": summary([r.get("min_ns") for r in ok]),
            "p99_ns": summary([r.get("p99_ns") for r in ok]),
            "rounds": [{"round": r["round"], **(r["result"] or {})} for r in floor if r["status"] == "ok"],
        }
    for v, d in prs:
        if d == "split" or v == d:
            out["targets"][f"{v}/{d}"] = targets(out, records, v, d)
    return out


def status_text(st):
    bad = [s for s in st if s != "ok"]
    return "; ".join(bad)


def arm_label(a):
    v, d = a["vduse_variant"], a["dpdk_variant"]
    return v if d == "split" else f"{v} vs DPDK {d}"


def fmt_ratio(v):
    return "-" if v is None else f"{v:.2f}"


def markdown(rep):
    m = rep["meta"]
    st = m["settings"]
    skipped = st.get("variants_skipped") or {}
    lines = []
    lines.append(f"# vduse-net vs DPDK testpmd: {m['date']}")
    lines.append("")
    lines.append(f"- commit: `{m['commit']}`{' (dirty tree)' if m.get('dirty') else ''}")
    lines.append(f"- machine: {m['cpu_model']}, {m['cores']} cores, kernel {m['kernel']}")
    lines.append(f"- DPDK: {m.get('dpdk_version', '?')}; rustc: {m.get('rustc', '?')}")
    lines.append(f"- load average before / after: {m.get('load_before', '?')} / {m.get('load_after', '?')}")
    lines.append(
        f"- {st['rounds']} rounds x {st['duration']} s per run, vduse-net and DPDK alternating (A B A B); "
        f"device core {st['device_core']}, driver core {st['gen_core']}; {st.get('ring_size', 256)}-entry rings; "
        f"pktgen --check {st.get('check', 'full')}"
    )
    vv = st.get("variants") or ["split"]
    dv = st.get("dpdk_variants") or ["split"]
    lines.append(f"- vduse-net ring arms: {', '.join(VARIANT_TEXT.get(v, v) for v in vv)}; "
                 f"DPDK arms: {', '.join(dv)} (virtio-user{' / packed_vq=1' if 'packed' in dv else ''})")
    for v, why in sorted(skipped.items()):
        lines.append(f"- **vduse-net arm {v} not run**: {why}")
    tsc = sorted({round(r["result"]["tsc_hz"] / 1e6) for r in rep["runs"]
                  if r["impl"] == "vduse-net" and r["status"] == "ok" and (r.get("result") or {}).get("tsc_hz")})
    mhz = sorted({c["tsc_mhz"] for r in rep["runs"] if r["impl"] == "dpdk" and r["status"] == "ok"
                  for c in ((r.get("result") or {}).get("core_cycles") or {}).values() if c and c.get("tsc_mhz")})
    if tsc or mhz:
        lines.append(f"- TSC rate: vduse-net measured {', '.join(map(str, tsc)) or '-'} MHz; "
                     f"testpmd {', '.join(map(str, mhz)) or '-'} MHz (cycles are TSC ticks on both sides)")
    lines.append("")

    lines.append("## Targets (issue 14)")
    lines.append("")
    lines.append("Judged on the default feature set (split ring) against DPDK split; ratio = median of the"
                 " per-round ratios (vduse-net / DPDK, or / floor). Other arms beside, against DPDK split.")
    lines.append("")
    tg = rep.get("targets") or {}
    main = tg.get("split/split")
    others = [(k, t) for k, t in tg.items() if k != "split/split"]
    def tlabel(k):
        v, d = k.split("/")
        return v if d == "split" else f"{v} vs DPDK {d}"

    head = "| target | vduse-net | reference | ratio | split |" + "".join(f" {tlabel(k)} |" for k, _ in others)
    lines.append(head)
    lines.append("|---|---|---|---|---|" + "---|" * len(others))
    for key, text, thr, op in TARGETS:
        t = (main or {}).get(key)

        def cell_val(t, which):
            if not t:
                return "-"
            if key == "clean":
                if which == "vduse-net":
                    return (f"{t['runs']} runs: lost {t['lost']}, integrity errors {t['integrity_errors']}, "
                            f"dup/reordered {t['duplicates_or_reordered']}, failed runs {t['failed']}")
                return "0"
            v = t.get(which)
            if v is None:
                return "-"
            return f"{v:.0f} {t['unit']}" if t["unit"] in ("ns", "cycles/frame") else f"{v:.3f} {t['unit']}"

        ref = "floor" if key.startswith("rtt_floor") else "dpdk"
        refcell = cell_val(t, ref) + (" (floor p50)" if ref == "floor" and t else "")
        ratio_cell = "-" if key == "clean" or not t else f"{fmt_ratio(t['ratio'])} ({op} {thr})"
        verdict = (t or {}).get("verdict", "no data")
        row = f"| {text} | {cell_val(t, 'vduse-net')} | {refcell} | {ratio_cell} | **{verdict}** |"
        for k, ot in others:
            o = ot.get(key) or {}
            if k.split("/")[0] in skipped:
                row += " skipped |"
            elif key == "clean":
                row += f" {o.get('verdict', 'no data')} |"
            else:
                row += f" {fmt_ratio(o.get('ratio'))} ({o.get('verdict', 'no data')}) |"
        lines.append(row)
    lines.append("")

    lines.append("## Rates and round trips")
    lines.append("")
    lines.append("Ratio = vduse-net / DPDK per round (same round, back to back), then the median over rounds.")
    lines.append("For Mpps a ratio above 1 means vduse-net is faster; for round trip time, below 1."
                 " vduse-net's ping-pong figure is its mean (p50 in the targets and in \"Every run\").")
    lines.append("")
    lines.append("| scenario | arm | figure | vduse-net median (min-max) | DPDK median (min-max) | ratio per round | median ratio |")
    lines.append("|---|---|---|---|---|---|---|")
    for s, sc in rep["scenarios"].items():
        unit = sc["unit"]
        for a in sc["arms"]:

            def cell(impl):
                sm = a[impl]
                if sm is None and impl == "vduse-net" and a["vduse_variant"] in skipped:
                    return "skipped (see the header)"
                if sm is None:
                    return status_text(a["status"][impl]) or "n/a"
                return f"{fmt(sm['median'], unit)} ({fmt(sm['min'], unit)}-{fmt(sm['max'], unit)})"

            ratios = ", ".join(fmt_ratio(r["ratio"]) for r in a["rounds"])
            med = "-" if a["ratio"] is None else f"**{a['ratio']['median']:.2f}**"
            lines.append(f"| {sc['title']} | {arm_label(a)} | {sc['metric']} ({unit}) | {cell('vduse-net')} | "
                         f"{cell('dpdk')} | {ratios} | {med} |")
    lines.append("")

    lines.append("## Busy cycles per frame")
    lines.append("")
    lines.append("testpmd's `--record-core-cycles` definition on both sides: TSC cycles of poll-loop iterations"
                 " (bursts) that moved at least one frame, over the frames moved; idle polls are not counted."
                 " Device = vduse-net's poll thread (`device_cycles_per_frame`) vs testpmd's vhost side;"
                 " generator = `vduse-net pktgen`/`latency` vs the virtio-user testpmd. Medians over rounds"
                 " (min-max); device ratio = vduse-net / DPDK vhost per round, then the median (below 1:"
                 " vduse-net's device spends fewer cycles per frame). \"busier\" counts the rounds in which"
                 " pktgen found the device or the generator spending more cycles per frame.")
    lines.append("")
    lines.append("vduse-net's figures without iterations over 50 µs (mostly preemption on a shared machine; testpmd"
                 " has no such figure) are in the \"excl. long\" columns. testpmd counts from `start` to `stop`,"
                 " warm-up included.")
    lines.append("")
    lines.append("| scenario | arm | vduse-net device | DPDK vhost | device ratio per round | median device ratio"
                 " | vduse-net generator | DPDK virtio-user | busier (vduse-net) | vduse-net device excl. long"
                 " | vduse-net generator excl. long |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for s, sc in rep["scenarios"].items():
        for a in sc["arms"]:
            cy = a["cycles"]

            def cc(k):
                sm = cy.get(k)
                return "-" if sm is None else f"{sm['median']:.0f} ({sm['min']:.0f}-{sm['max']:.0f})"

            per = ", ".join(fmt_ratio(r["cycles_ratio"]) for r in a["rounds"])
            med = cy.get("cycles_ratio")
            busier = ", ".join(f"{k} {n}/{len(a['rounds'])}" for k, n in a["busier"].items()) or "-"
            lines.append(
                f"| {sc['title']} | {arm_label(a)} | {cc('vduse-net_device_cpf')} | {cc('dpdk_device_cpf')} | {per} | "
                f"{'-' if med is None else '**' + format(med['median'], '.2f') + '**'} | "
                f"{cc('vduse-net_generator_cpf')} | {cc('dpdk_generator_cpf')} | {busier} | "
                f"{cc('vduse-net_device_cpf_excl_long')} | {cc('vduse-net_generator_cpf_excl_long')} |"
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
    lines.append("| round | scenario | impl | arm | status | Mpps tx | Mpps rx | Gbit/s tx | Gbit/s rx | RTT / latency ns"
                 " | device cycles/frame | generator cycles/frame | lost | integrity errors |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rep["runs"]:
        if r["impl"] == "floor":
            continue
        res = r.get("result") or {}
        arm_txt = variant_of(r)
        if r["status"] != "ok":
            err = (r.get("error") or "").splitlines()
            note = r["status"] + (f": {err[0][:80]}" if err else "")
            if r["impl"] == "vduse-net" and arm_txt in skipped and r["status"] == "not available":
                note = "skipped (see the header)"
            lines.append(f"| {r['round']} | {r['scenario']} | {r['impl']} | {arm_txt} | {note} | | | | | | | | | |")
            continue
        lat = res.get("rtt_ns")
        if lat is None and res.get("p50_ns") is not None:
            lat = res["p50_ns"]
            lat_txt = f"p50 {lat:.0f}, p99 {res.get('p99_ns', 0):.0f}"
        else:
            lat_txt = fmt(lat, "ns")
        dc, gc = res.get("device_cycles_per_frame"), res.get("generator_cycles_per_frame")
        lines.append(
            f"| {r['round']} | {r['scenario']} | {r['impl']} | {arm_txt} | ok | {fmt(res.get('mpps_tx'), 'M')} | "
            f"{fmt(res.get('mpps_rx'), 'M')} | {fmt(res.get('gbps_tx'), 'G')} | {fmt(res.get('gbps_rx'), 'G')} | "
            f"{lat_txt} | {'-' if dc is None else f'{dc:.0f}'} | {'-' if gc is None else f'{gc:.0f}'} | "
            f"{res.get('lost', '-')} | {res.get('integrity_errors', '-')} |"
        )
    lines.append("")
    lines.append("## Command lines")
    lines.append("")
    seen = set()
    for r in rep["runs"]:
        key = (r["scenario"], r["impl"], variant_of(r))
        if key in seen or not r.get("cmd"):
            continue
        seen.add(key)
        lines.append(f"- {r['scenario']} / {r['impl']}{'' if r['impl'] == 'floor' else ' ' + variant_of(r)}:")
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
