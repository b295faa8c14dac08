#!/usr/bin/env python3
"""Run one DPDK testpmd scenario: a vhost-user testpmd (the device side) and a
virtio-user testpmd (the driver side) joined by a unix socket, both driven
through their interactive command line on stdin.

Prints one JSON object on stdout. Rates are measured from the port counters
read twice, `duration` seconds apart, and the wall-clock time between the two
reads as seen on this side of the pipe (testpmd's own Rx-pps uses the TSC,
whose rate DPDK guesses at and which is unreliable in a VM).

Directions follow `vduse-net pktgen`: tx = driver -> device (virtio-user TX),
rx = device -> driver (virtio-user RX).

Both testpmd processes run with --record-core-cycles: at `stop` each prints
"CPU cycles/packet" over the iterations of its forwarding loop that moved
packets (busy TSC cycles / packets received, or sent in txonly/flowgen). The
vhost side's figure is the device's cost per packet, the one vduse-net's
device_cycles_per_frame is compared with; the virtio-user side's is the
generator's.
"""

import argparse
import ctypes
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

PROMPT = "testpmd> "
# EAL's per-process runtime files (mp socket, fbarrays) as root.
RUNTIME_DIR = os.environ.get("XDG_RUNTIME_DIR") if os.geteuid() != 0 else "/var/run/dpdk"
RUNTIME_DIR = RUNTIME_DIR and os.path.join(RUNTIME_DIR, "dpdk") if os.geteuid() != 0 else RUNTIME_DIR

# scenario -> (vhost forward mode, virtio-user forward mode, frame size,
#              virtio-user start command, virtio-user burst or None)
SCENARIOS = {
    "loopback64": ("macswap", "io", 64, "start tx_first {bursts}", None),
    "loopback1518": ("macswap", "io", 1518, "start tx_first {bursts}", None),
    "txonly": ("rxonly", "txonly", 64, "start", None),
    "rxonly": ("txonly", "rxonly", 64, "start", None),
    # One frame in flight: virtio-user sends a single burst of one frame and
    # then forwards back whatever it receives; the vhost side swaps MACs and
    # returns it. Forwarded frames per second = round trips per second.
    "pingpong": ("macswap", "io", 64, "start tx_first 1", 1),
}


def _die_with_parent():
    # If this script is killed outright, take testpmd down with it instead of
    # leaving a polling process behind. PR_SET_PDEATHSIG = 1.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL, 0, 0, 0)


class Testpmd:
    """One testpmd process whose output is collected by a reader thread."""

    def __init__(self, name, argv, log_path):
        self.name = name
        self.argv = argv
        self.buf = ""
        self.prompts = 0
        self.cond = threading.Condition()
        self.log = open(log_path, "w")
        # Own session so a stuck process and anything it forked can be killed
        # as a group without touching anything else.
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        fd = self.proc.stdout.fileno()
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            text = chunk.decode("utf-8", "replace")
            self.log.write(text)
            self.log.flush()
            with self.cond:
                self.buf += text
                self.prompts = self.buf.count(PROMPT)
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def wait_for(self, pred, timeout):
        """Wait until pred() holds; False on time-out or once the process has
        exited and its output is drained without pred() becoming true."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while not pred():
                if time.monotonic() >= deadline:
                    return False
                if self.proc.poll() is not None and not self.reader.is_alive():
                    return False
                self.cond.wait(0.1)
        return True

    def wait_prompt(self, timeout):
        if not self.wait_for(lambda: self.prompts > 0, timeout):
            rc = self.proc.poll()
            why = f"exited with status {rc}" if rc is not None else f"no prompt within {timeout}s"
            raise RuntimeError(f"{self.name}: {why}\n{self.tail()}")

    def cmd(self, line, timeout=10.0):
        """Send one command and return (its output, send time, done time)."""
        with self.cond:
            before = self.prompts
            start = len(self.buf)
        t_send = time.monotonic()
        try:
            self.proc.stdin.write((line + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as e:
            raise RuntimeError(f"{self.name}: cannot send {line!r}: {e}\n{self.tail()}")
        if not self.wait_for(lambda: self.prompts > before, timeout):
            raise RuntimeError(f"{self.name}: {line!r} did not complete in {timeout}s\n{self.tail()}")
        t_done = time.monotonic()
        with self.cond:
            out = self.buf[start:]
        return out, t_send, t_done

    def tail(self, n=1500):
        with self.cond:
            return self.buf[-n:]

    def quit(self, timeout=10.0):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(b"quit\n")
                self.proc.stdin.flush()
                self.proc.stdin.close()
            except (BrokenPipeError, OSError):
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self.reader.join(2)
        self.log.close()

    def kill(self):
        if self.proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGINT, 3), (signal.SIGKILL, 5)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue


STAT_RE = {
    "rx_packets": re.compile(r"RX-packets:\s+(\d+)\s+RX-missed:\s+(\d+)\s+RX-bytes:\s+(\d+)"),
    "tx_packets": re.compile(r"TX-packets:\s+(\d+)\s+TX-errors:\s+(\d+)\s+TX-bytes:\s+(\d+)"),
}


def parse_port_stats(text):
    """Counters of the first port in a `show port stats all` output."""
    rx = STAT_RE["rx_packets"].search(text)
    tx = STAT_RE["tx_packets"].search(text)
    if not rx or not tx:
        raise RuntimeError(f"cannot parse port stats from:\n{text[-1500:]}")
    return {
        "rx_packets": int(rx.group(1)),
        "rx_missed": int(rx.group(2)),
        "rx_bytes": int(rx.group(3)),
        "tx_packets": int(tx.group(1)),
        "tx_errors": int(tx.group(2)),
        "tx_bytes": int(tx.group(3)),
    }


def snapshot(pmds):
    """Read both sides' counters; the time is the midpoint of each exchange."""
    out = {}
    for p in pmds:
        text, t0, t1 = p.cmd("show port stats all")
        stats = parse_port_stats(text)
        stats["t"] = (t0 + t1) / 2
        out[p.name] = stats
    return out


def rates(a, b):
    dt = b["t"] - a["t"]
    d = {k: b[k] - a[k] for k in a if k != "t"}
    return {
        "seconds": dt,
        "rx_frames": d["rx_packets"],
        "tx_frames": d["tx_packets"],
        "mpps_rx": d["rx_packets"] / dt / 1e6,
        "mpps_tx": d["tx_packets"] / dt / 1e6,
        # Frame bytes as counted by the PMD (no FCS, no preamble/IFG).
        "gbps_rx": d["rx_bytes"] * 8 / dt / 1e9,
        "gbps_tx": d["tx_bytes"] * 8 / dt / 1e9,
        "rx_missed": d["rx_missed"],
        "tx_errors": d["tx_errors"],
    }


# testpmd's --record-core-cycles line in the `stop` output, DPDK 22.11:
#   CPU cycles/packet=637.92 (total cycles=3352881278 / total macswap packets=5256000) at 2100 MHz Clock
# Later releases say "busy cycles"; the figure itself is always
# "CPU cycles/packet=". In 22.11 the rx-driven engines (io, macswap, rxonly)
# stop the clock only for bursts that received at least one packet, so empty
# polls are excluded; txonly counts every burst it built; the divisor is
# packets received (sent in txonly).
CYCLES_RE = re.compile(
    r"CPU cycles/packet=([0-9.]+)"
    r"(?:\s*\((?:busy|total) cycles=(\d+) / total (.+?) packets=(\d+)\)(?: at (\d+) MHz Clock)?)?"
)


def parse_core_cycles(text):
    """The last "CPU cycles/packet" figure of a `stop` output, or None."""
    found = list(CYCLES_RE.finditer(text))
    if not found:
        return None
    m = found[-1]
    out = {"cycles_per_packet": float(m.group(1))}
    if m.group(2):
        out["busy_cycles"] = int(m.group(2))
        out["packets_counted"] = m.group(3)
        out["packets"] = int(m.group(4))
    if m.group(5):
        out["tsc_mhz"] = int(m.group(5))
    return out


# --record-burst-stats lines in the `stop` output (DPDK 22.11):
#   RX-bursts : 1068498 [83% of 0 pkts + 16% of 32 pkts + 0% of 1 pkts + 1% of other]
# The two or three most frequent burst sizes, then the rest as "other".
BURST_RE = re.compile(r"(RX|TX)-bursts\s*:\s*(\d+)\s*\[([^\]]*)\]")
SPREAD_RE = re.compile(r"(\d+)% of (\d+) pkts")
OTHER_RE = re.compile(r"(\d+)% of other")


def parse_burst_stats(text):
    """{"rx": {...}, "tx": {...}} from the last burst-stats lines of a `stop`
    output (first port), or None. Each: bursts (polls, empty ones included in
    RX), spread {burst size: percent} and other_pct."""
    out = {}
    for m in BURST_RE.finditer(text):
        key = m.group(1).lower()
        if key in out:
            continue  # first port only; the accumulated block has none
        spread = {int(n): int(pct) for pct, n in SPREAD_RE.findall(m.group(3))}
        other = OTHER_RE.search(m.group(3))
        out[key] = {"bursts": int(m.group(2)), "spread_pct": spread,
                    "other_pct": int(other.group(1)) if other else 0}
    return out or None


def _on_term(signum, frame):
    raise KeyboardInterrupt


def main():
    signal.signal(signal.SIGTERM, _on_term)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("scenario", choices=sorted(SCENARIOS))
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--vhost-core", type=int, default=0)
    ap.add_argument("--virtio-core", type=int, default=1)
    ap.add_argument("--bursts", type=int, default=8, help="bursts of 32 frames put in flight for loopback")
    ap.add_argument("--queue-size", type=int, default=256, help="virtio-user ring size")
    ap.add_argument("--packed", action="store_true", help="virtio-user with a packed ring (packed_vq=1)")
    ap.add_argument("--burst-stats", action="store_true",
                    help="also --record-burst-stats (adds a counter update per burst inside the timed region)")
    ap.add_argument("--mbufs", type=int, default=16384)
    ap.add_argument("--testpmd", default=shutil.which("dpdk-testpmd") or "dpdk-testpmd")
    ap.add_argument("--logdir", default=None, help="keep the two testpmd logs here")
    ap.add_argument("--tag", default=str(os.getpid()), help="EAL file prefixes are vh<tag> and vu<tag>")
    args = ap.parse_args()

    vh_mode, vu_mode, size, vu_start, vu_burst = SCENARIOS[args.scenario]
    workdir = tempfile.mkdtemp(prefix="perf-dpdk-")
    logdir = args.logdir or workdir
    os.makedirs(logdir, exist_ok=True)
    sock = os.path.join(workdir, "vhost.sock")
    tag = args.tag

    # --no-huge: this VM has no hugepages; memory is then a memfd that the
    # vhost side can map. Both lcores of a process share one CPU: the main
    # lcore only runs the command line, the second one polls.
    # (--in-memory would avoid the runtime dir but is refused with --no-huge.)
    eal = ["--no-pci", "--no-huge", "-m", "1024"]
    # testpmd prints with stdio, which is block-buffered on a pipe, while its
    # prompt is written straight to the fd: unbuffer stdout so that a prompt
    # means the command's output has arrived.
    unbuf = ["stdbuf", "-o0", "-e0"]
    common = [f"--total-num-mbufs={args.mbufs}", "--txpkts=%d" % size, "--record-core-cycles"]
    if args.burst_stats:
        # `stop` also prints how full the RX/TX bursts were (the busy-cycles
        # figure depends on it: full bursts amortise the poll). Off by
        # default: 22.11 updates the counters between the two TSC reads.
        common.append("--record-burst-stats")
    vh_argv = [*unbuf, args.testpmd, *eal,
               "--lcores", f"0@{args.vhost_core},1@{args.vhost_core}",
               "--file-prefix", f"vh{tag}",
               "--vdev", f"net_vhost0,iface={sock}",
               "--", "-i", f"--forward-mode={vh_mode}", *common]
    vu_argv = [*unbuf, args.testpmd, *eal,
               "--lcores", f"0@{args.virtio_core},1@{args.virtio_core}",
               "--file-prefix", f"vu{tag}",
               "--vdev", f"net_virtio_user0,path={sock},queue_size={args.queue_size}"
               + (",packed_vq=1" if args.packed else ""),
               "--", "-i", f"--forward-mode={vu_mode}", *common]
    if vu_burst:
        vu_argv.append(f"--burst={vu_burst}")
    vu_start = vu_start.format(bursts=args.bursts)

    result = {
        "impl": "dpdk-testpmd",
        "scenario": args.scenario,
        "size": size,
        "ring": "packed" if args.packed else "split",
        "cmd_vhost": shlex.join(vh_argv) + f"  # then: start",
        "cmd_virtio": shlex.join(vu_argv) + f"  # then: {vu_start}",
    }
    pmds = []
    try:
        vh = Testpmd("vhost", vh_argv, os.path.join(logdir, f"{args.scenario}-vhost.log"))
        pmds.append(vh)
        vh.wait_prompt(60)
        if not os.path.exists(sock):
            raise RuntimeError(f"vhost socket {sock} missing\n{vh.tail()}")
        vu = Testpmd("virtio", vu_argv, os.path.join(logdir, f"{args.scenario}-virtio.log"))
        pmds.append(vu)
        vu.wait_prompt(60)
        vh.cmd("start")
        vu.cmd(vu_start)
        time.sleep(args.warmup)
        a = snapshot(pmds)
        time.sleep(args.duration)
        b = snapshot(pmds)
        vu_stop, _, _ = vu.cmd("stop")
        vh_stop, _, _ = vh.cmd("stop")
        vh_cyc = parse_core_cycles(vh_stop)
        vu_cyc = parse_core_cycles(vu_stop)
        r_vu = rates(a["virtio"], b["virtio"])
        r_vh = rates(a["vhost"], b["vhost"])
        result.update({
            "duration_s": r_vu["seconds"],
            "tx_frames": r_vu["tx_frames"],
            "rx_frames": r_vu["rx_frames"],
            "mpps_tx": r_vu["mpps_tx"],
            "mpps_rx": r_vu["mpps_rx"],
            "gbps_tx": r_vu["gbps_tx"],
            "gbps_rx": r_vu["gbps_rx"],
            "virtio": r_vu,
            "vhost": r_vh,
            # testpmd --record-core-cycles, from `start` to `stop` (warm-up
            # included; a ratio, so the window matters little).
            "device_cycles_per_frame": vh_cyc and vh_cyc["cycles_per_packet"],
            "generator_cycles_per_frame": vu_cyc and vu_cyc["cycles_per_packet"],
            "core_cycles": {"vhost": vh_cyc, "virtio": vu_cyc},
            "burst_stats": {"vhost": parse_burst_stats(vh_stop), "virtio": parse_burst_stats(vu_stop)},
        })
        # What the vhost side negotiated: the ring layout asked for is the
        # one measured only if the features say so (bit 34, RING_PACKED).
        feats = re.findall(r"negotiated Virtio features: (0x[0-9a-fA-F]+)", vh.tail(1 << 20))
        if feats:
            f = int(feats[-1], 16)
            result["virtio_features"] = feats[-1]
            result["ring_negotiated"] = "packed" if f >> 34 & 1 else "split"
            if result["ring_negotiated"] != result["ring"]:
                raise RuntimeError(f"asked for a {result['ring']} ring, vhost negotiated {feats[-1]}")
        # txonly: the device side's receive count is the delivered rate.
        if args.scenario == "txonly":
            result["mpps_rx"] = 0.0
            result["gbps_rx"] = 0.0
        if args.scenario == "pingpong":
            # Each round trip is one virtio-user TX and one RX of the same frame.
            rt = r_vu["rx_frames"]
            result["round_trips"] = rt
            result["rtt_ns"] = r_vu["seconds"] / rt * 1e9 if rt else None
    except Exception as e:  # report, then clean up below
        result["error"] = str(e)
    except KeyboardInterrupt:
        result["error"] = "interrupted"
    finally:
        for p in reversed(pmds):
            p.quit()
        for p in pmds:
            p.kill()
        shutil.rmtree(workdir, ignore_errors=True)
        for prefix in (f"vh{tag}", f"vu{tag}"):
            shutil.rmtree(os.path.join(RUNTIME_DIR, prefix), ignore_errors=True)
    print(json.dumps(result))
    return 1 if "error" in result else 0


if __name__ == "__main__":
    sys.exit(main())
