#!/usr/bin/env python3
"""Unit tests of the perf suite's Python parts (no testpmd, no vduse-net):

    python3 -m unittest discover -s perf -p 'test_*.py'

The testpmd text below is what DPDK 22.11.11 (Debian 12) prints at `stop`
with --record-core-cycles --record-burst-stats, copied from a run here.
"""

import json
import os
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import report  # noqa: E402
import testpmd_pair  # noqa: E402

STOP_22_11 = """\
Telling cores to stop...
Waiting for lcores to finish...

  ---------------------- Forward statistics for port 0  ----------------------
  RX-packets: 5791368        RX-dropped: 0             RX-total: 5791368
  TX-packets: 5791368        TX-dropped: 0             TX-total: 5791368
  RX-bursts : 1068498 [83% of 0 pkts + 16% of 32 pkts + 0% of 1 pkts + 1% of other]
  TX-bursts : 181033 [0% of 0 pkts + 99% of 32 pkts + 0% of 1 pkts + 1% of other]
  ----------------------------------------------------------------------------

  +++++++++++++++ Accumulated forward statistics for all ports+++++++++++++++
  RX-packets: 5791368        RX-dropped: 0             RX-total: 5791368
  TX-packets: 5791368        TX-dropped: 0             TX-total: 5791368
  ++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++

  CPU cycles/packet=519.56 (total cycles=3008960030 / total macswap packets=5791368) at 2100 MHz Clock

Done.
testpmd> """


class TestpmdParsing(unittest.TestCase):
    def test_core_cycles_22_11(self):
        c = testpmd_pair.parse_core_cycles(STOP_22_11)
        self.assertEqual(c, {"cycles_per_packet": 519.56, "busy_cycles": 3008960030, "packets_counted": "macswap",
                             "packets": 5791368, "tsc_mhz": 2100})

    def test_core_cycles_later_wording_and_last_wins(self):
        text = ("CPU cycles/packet=10.00 (total cycles=10 / total io packets=1) at 1000 MHz Clock\n"
                "CPU cycles/packet=303.12 (busy cycles=1234 / total io packets=5678) at 2000 MHz Clock\n")
        c = testpmd_pair.parse_core_cycles(text)
        self.assertEqual(c["cycles_per_packet"], 303.12)
        self.assertEqual(c["busy_cycles"], 1234)
        self.assertEqual(c["packets"], 5678)

    def test_core_cycles_absent(self):
        self.assertIsNone(testpmd_pair.parse_core_cycles("Telling cores to stop...\nDone.\n"))

    def test_burst_stats(self):
        b = testpmd_pair.parse_burst_stats(STOP_22_11)
        self.assertEqual(b["rx"], {"bursts": 1068498, "spread_pct": {0: 83, 32: 16, 1: 0}, "other_pct": 1})
        self.assertEqual(b["tx"]["bursts"], 181033)
        self.assertEqual(b["tx"]["spread_pct"][32], 99)
        self.assertIsNone(testpmd_pair.parse_burst_stats("no stats"))


def vrun(rd, scen, variant, **res):
    base = {"lost": 0, "integrity_errors": 0, "duplicates_or_reordered": 0, "tsc_hz": 2.0999e9}
    base.update(res)
    return {"round": rd, "scenario": scen, "impl": "vduse-net", "variant": variant, "status": "ok",
            "cmd": [f"vduse-net {scen} {variant}"], "result": base, "error": None}


def drun(rd, scen, variant="split", **res):
    res.setdefault("core_cycles", {"vhost": {"tsc_mhz": 2100}, "virtio": None})
    return {"round": rd, "scenario": scen, "impl": "dpdk", "variant": variant, "status": "ok",
            "cmd": ["testpmd vhost", "testpmd virtio"], "result": res, "error": None}


def meta(variants=("split", "packed", "in_order"), dpdk_variants=("split",), skipped=None):
    return {
        "date": "20261129T000000Z", "commit": "0" * 40, "dirty": False, "cpu_model": "test", "cores": 2,
        "kernel": "6.18", "dpdk_version": "22.11", "rustc": "rustc", "load_before": "0 0 0", "load_after": "0 0 0",
        "settings": {"rounds": 2, "duration": 2, "scenarios": ["loopback64", "loopback1518", "pingpong"],
                     "device_core": 0, "gen_core": 1, "check": "seq", "variants": list(variants),
                     "dpdk_variants": list(dpdk_variants), "variants_skipped": skipped or {}},
    }


def records():
    recs = []
    # Round 1: vduse-net split 15 Mpps at 180 cycles vs DPDK 9 Mpps at 300;
    # round 2: 10 Mpps at 240 vs 10 Mpps at 300.
    for rd, (vm, vc, dm, dc) in enumerate([(15.0, 180.0, 9.0, 300.0), (10.0, 240.0, 10.0, 300.0)], 1):
        recs.append({"round": rd, "scenario": "floor", "impl": "floor", "variant": "-", "status": "ok",
                     "cmd": ["floor"], "result": {"p50_ns": 100.0 * rd, "min_ns": 50.0, "p99_ns": 300.0}})
        recs.append(vrun(rd, "loopback64", "split", mpps_rx=vm, mpps_tx=vm, gbps_rx=vm * 0.512,
                         device_cycles_per_frame=vc, generator_cycles_per_frame=vc + 50,
                         device_cycles_per_frame_excl_long=vc - 10, busier="generator"))
        recs.append(drun(rd, "loopback64", mpps_rx=dm, mpps_tx=dm, gbps_rx=dm * 0.512,
                         device_cycles_per_frame=dc, generator_cycles_per_frame=250.0))
        recs.append(vrun(rd, "loopback64", "packed", mpps_rx=vm * 1.2, device_cycles_per_frame=vc * 0.9,
                         busier="device"))
        recs.append({"round": rd, "scenario": "loopback64", "impl": "vduse-net", "variant": "in_order",
                     "status": "not available", "cmd": [], "result": None, "error": "skipped: refused"})
        recs.append(vrun(rd, "loopback1518", "split", mpps_rx=5.0, gbps_rx=60.0))
        recs.append(drun(rd, "loopback1518", mpps_rx=5.5, gbps_rx=66.0))
        recs.append(vrun(rd, "pingpong", "split", mean_ns=320.0, p50_ns=250.0 * rd))
        recs.append(drun(rd, "pingpong", rtt_ns=350.0))
    return recs


class Report(unittest.TestCase):
    def test_arms_ratios_and_medians(self):
        rep = report.build(meta(), records())
        arms = {(a["vduse_variant"], a["dpdk_variant"]): a for a in rep["scenarios"]["loopback64"]["arms"]}
        self.assertEqual(set(arms), {("split", "split"), ("packed", "split"), ("in_order", "split")})
        split = arms[("split", "split")]
        self.assertEqual([r["ratio"] for r in split["rounds"]], [15.0 / 9.0, 1.0])
        self.assertAlmostEqual(split["ratio"]["median"], (15.0 / 9.0 + 1.0) / 2)
        self.assertEqual([r["cycles_ratio"] for r in split["rounds"]], [0.6, 0.8])
        self.assertAlmostEqual(split["cycles"]["cycles_ratio"]["median"], 0.7)
        self.assertEqual(split["cycles"]["vduse-net_device_cpf"]["median"], 210.0)
        self.assertEqual(split["cycles"]["dpdk_generator_cpf"]["median"], 250.0)
        self.assertEqual(split["busier"], {"generator": 2})
        self.assertEqual(arms[("packed", "split")]["busier"], {"device": 2})
        io = arms[("in_order", "split")]
        self.assertIsNone(io["vduse-net"])
        self.assertEqual(io["status"]["vduse-net"], ["not available"])
        self.assertEqual(io["errors"]["vduse-net"], ["skipped: refused"])

    def test_targets(self):
        rep = report.build(meta(), records())
        t = rep["targets"]["split/split"]
        self.assertAlmostEqual(t["cycles64"]["ratio"], 0.7)
        self.assertEqual(t["cycles64"]["verdict"], "short")  # 0.7 > 0.67
        self.assertEqual(t["mpps64"]["verdict"], "short")  # median 1.33 < 1.5
        self.assertAlmostEqual(t["gbps1518"]["ratio"], 60.0 / 66.0)
        self.assertEqual(t["gbps1518"]["verdict"], "short")
        # p50 250 and 500 vs DPDK 350: ratios 0.714, 1.43 -> median 1.07.
        self.assertAlmostEqual(t["rtt_dpdk"]["ratio"], (250 / 350 + 500 / 350) / 2)
        self.assertEqual(t["rtt_dpdk"]["verdict"], "short")
        # p50 / floor p50 of the same round: 2.5 both rounds.
        self.assertAlmostEqual(t["rtt_floor"]["ratio"], 2.5)
        self.assertEqual(t["rtt_floor"]["verdict"], "met")
        self.assertEqual(t["clean"]["verdict"], "met")
        self.assertEqual(t["clean"]["runs"], 6)
        p = rep["targets"]["packed/split"]
        self.assertAlmostEqual(p["cycles64"]["ratio"], (0.54 + 0.72) / 2)
        self.assertEqual(p["cycles64"]["verdict"], "met")
        self.assertEqual(p["gbps1518"]["verdict"], "no data")
        self.assertEqual(rep["targets"]["in_order/split"]["clean"]["verdict"], "no data")

    def test_fwd_rows_get_their_own_targets(self):
        m = meta()
        m["settings"]["scenarios"].append("fwd64")
        recs = records()
        # fwd64: 12 Mpps at 150 cycles vs DPDK's loopback pair at 8 Mpps, 300.
        for rd in (1, 2):
            recs.append(vrun(rd, "fwd64", "split", mpps_rx=12.0, device_cycles_per_frame=150.0))
            recs.append(drun(rd, "fwd64", mpps_rx=8.0, device_cycles_per_frame=300.0))
        t = report.build(m, recs)["targets"]["split/split"]
        self.assertAlmostEqual(t["cycles64_fwd"]["ratio"], 0.5)
        self.assertEqual(t["cycles64_fwd"]["verdict"], "met")
        self.assertAlmostEqual(t["mpps64_fwd"]["ratio"], 1.5)
        self.assertEqual(t["mpps64_fwd"]["verdict"], "met")
        self.assertEqual(t["gbps1518_fwd"]["verdict"], "no data")
        # The loopback rows are judged on their own scenario still.
        self.assertAlmostEqual(t["cycles64"]["ratio"], 0.7)
        md = report.markdown(report.build(m, recs))
        self.assertIn("64 B forward end to end", md)

    def test_pingfwd_rows_get_their_own_rtt_targets(self):
        m = meta()
        m["settings"]["scenarios"].append("pingfwd")
        recs = records()
        # pingfwd: p50 200 and 280 vs DPDK's pingpong at 350; floors 100, 200.
        for rd, p50 in ((1, 200.0), (2, 280.0)):
            recs.append(vrun(rd, "pingfwd", "split", mean_ns=300.0, p50_ns=p50))
            recs.append(drun(rd, "pingfwd", rtt_ns=350.0))
        rep = report.build(m, recs)
        t = rep["targets"]["split/split"]
        self.assertAlmostEqual(t["rtt_dpdk_fwd"]["ratio"], (200 / 350 + 280 / 350) / 2)
        self.assertEqual(t["rtt_dpdk_fwd"]["verdict"], "met")
        self.assertAlmostEqual(t["rtt_floor_fwd"]["ratio"], (2.0 + 1.4) / 2)
        self.assertEqual(t["rtt_floor_fwd"]["verdict"], "met")
        # The plain ping-pong keeps its own figures.
        self.assertAlmostEqual(t["rtt_dpdk"]["ratio"], (250 / 350 + 500 / 350) / 2)
        # The scenario row compares means, as the pingpong row does.
        arm = rep["scenarios"]["pingfwd"]["arms"][0]
        self.assertEqual(arm["vduse-net"]["median"], 300.0)
        self.assertEqual(arm["figure_notes"]["dpdk"], "mean (1 / round trips per s)")
        md = report.markdown(rep)
        self.assertIn("ping-pong forwarded: RTT p50 <= 3x", md)
        self.assertIn("| 240 ns | 150 ns (floor p50) | 1.70 (<= 3.0) | **met** |", md)
        # Without the row the targets say so.
        self.assertEqual(report.build(meta(), records())["targets"]["split/split"]["rtt_dpdk_fwd"]["verdict"],
                         "no data")

    def test_lost_frames_or_failed_run_fail_clean(self):
        recs = records()
        recs.append(vrun(3, "loopback64", "split", mpps_rx=1.0, lost=2))
        self.assertEqual(report.build(meta(), recs)["targets"]["split/split"]["clean"]["verdict"], "short")
        recs = records()
        recs.append({"round": 3, "scenario": "loopback64", "impl": "vduse-net", "variant": "split",
                     "status": "error", "cmd": ["x"], "result": None, "error": "exit 1: boom"})
        t = report.build(meta(), recs)["targets"]["split/split"]["clean"]
        self.assertEqual((t["verdict"], t["failed"]), ("short", 1))

    def test_dpdk_packed_pairs_with_vduse_packed(self):
        recs = records()
        for rd in (1, 2):
            recs.append(drun(rd, "loopback64", "packed", mpps_rx=8.0, device_cycles_per_frame=200.0))
        rep = report.build(meta(dpdk_variants=("split", "packed")), recs)
        arms = {(a["vduse_variant"], a["dpdk_variant"]): a for a in rep["scenarios"]["loopback64"]["arms"]}
        pp = arms[("packed", "packed")]
        self.assertEqual([r["cycles_ratio"] for r in pp["rounds"]], [162.0 / 200.0, 216.0 / 200.0])
        self.assertIn("packed/packed", rep["targets"])
        md = report.markdown(rep)
        self.assertIn("| packed vs DPDK packed |", md)

    def test_old_records_without_variant_are_split(self):
        recs = [dict(r) for r in records() if r.get("variant") in ("split", "-")]
        for r in recs:
            r.pop("variant")
        m = meta()
        del m["settings"]["variants"], m["settings"]["dpdk_variants"]
        rep = report.build(m, recs)
        self.assertEqual([(a["vduse_variant"], a["dpdk_variant"]) for a in rep["scenarios"]["loopback64"]["arms"]],
                         [("split", "split")])
        self.assertAlmostEqual(rep["targets"]["split/split"]["cycles64"]["ratio"], 0.7)

    def test_markdown_and_cli(self):
        m = meta(skipped={"in_order": "skipped: `pktgen --features +in_order --frames 1000` failed: refused"})
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "meta.json"), "w") as f:
                json.dump(m, f)
            with open(os.path.join(d, "raw.jsonl"), "w") as f:
                for r in records():
                    f.write(json.dumps(r) + "\n")
                f.write("not json\n")
            p = subprocess.run([sys.executable, os.path.join(os.path.dirname(__file__), "report.py"),
                                "--meta", os.path.join(d, "meta.json"), "--raw", os.path.join(d, "raw.jsonl"),
                                "--out-md", os.path.join(d, "o.md"), "--out-json", os.path.join(d, "o.json")],
                               capture_output=True, text=True)
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertIn("skipped, not JSON", p.stderr)
            with open(os.path.join(d, "o.md")) as f:
                md = f.read()
            with open(os.path.join(d, "o.json")) as f:
                self.assertIn("targets", json.load(f))
        self.assertIn("**vduse-net arm in_order not run**: skipped:", md)
        self.assertIn("## Targets (issue 14)", md)
        self.assertIn("- TSC rate: vduse-net measured 2100 MHz; testpmd 2100 MHz", md)
        # The cycles row of loopback64 split: medians, per-round ratios, median ratio.
        row = next(line for line in md.splitlines()
                   if line.startswith("| loopback, 64 B frames | split | 210 (180-240) | 300 (300-300) |"))
        self.assertIn("| 0.60, 0.80 | **0.70** |", row)
        self.assertIn("generator 2/2", row)
        tgt = next(line for line in md.splitlines() if line.startswith("| 64 B loopback: vduse-net device cycles"))
        self.assertIn("0.70 (<= 0.67) | **short** |", tgt)
        self.assertIn("0.63 (met)", tgt)  # packed beside
        self.assertTrue(tgt.endswith(" skipped |"), tgt)  # in_order
        self.assertIn("| 1 | loopback64 | vduse-net | in_order | skipped (see the header) |", md)


if __name__ == "__main__":
    unittest.main()
