#!/usr/bin/env python3
"""Turns the runs of scripts/engine-bench.sh into its figures.

  engine-report.py DIR

DIR holds, per round r: nvme-r.json (train_gpt, parameters and optimizer
state on NVMe), swap-read-r.json and swap-mixed-r.json (swapbench on the same
directory, the config's block size and queue depth, checksums on), and
cpu-r.json / torch-r.json (cpu offload and plain LibTorch on a model that
fits). Every figure is a median over the steps after the first of every
round (the first records the trace), with the quartiles.
"""
import glob
import json
import os
import statistics
import sys


def quartiles(values):
    values = sorted(values)
    if len(values) < 2:
        return values[0], values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], statistics.median(values), q[2]


def show(name, values, bar=None):
    lo, mid, hi = quartiles(values)
    note = "" if bar is None else ("  (bar %s)" % bar)
    print("%-58s %6.3f  [%.3f, %.3f]  n=%d%s" % (name, mid, lo, hi, len(values), note))


def steps(path):
    with open(path) as f:
        return json.load(f)["steps"][1:]


def swap_gbps(path):
    with open(path) as f:
        return json.load(f)["results"][0]["gbps"] * 1e9


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    d = sys.argv[1]
    rounds = sorted(os.path.basename(p)[5:-5] for p in glob.glob(os.path.join(d, "nvme-*.json")))
    fb, fb_sum, st, st_sum, read_eff, mixed_eff, stall = [], [], [], [], [], [], []
    for r in rounds:
        read_bw = swap_gbps(os.path.join(d, "swap-read-%s.json" % r))
        mixed_bw = swap_gbps(os.path.join(d, "swap-mixed-%s.json" % r))
        for s in steps(os.path.join(d, "nvme-%s.json" % r)):
            fwd = [s["compute_s"], s["param_read_s"], s["h2d_s"], s["d2h_s"]]
            opt = [s["cpu_adam_s"], s["optim_io_s"]]
            fb.append(s["fwd_bwd_s"] / max(fwd))
            fb_sum.append(s["fwd_bwd_s"] / sum(fwd))
            st.append(s["step_s"] / max(opt))
            st_sum.append(s["step_s"] / sum(opt))
            stall.append(s["stall_s"] / s["fwd_bwd_s"])
            if s["param_read_s"] > 0:
                read_eff.append(s["param_read_bytes"] / s["param_read_s"] / read_bw)
            if s["optim_io_s"] > 0:
                moved = s["optim_read_bytes"] + s["optim_write_bytes"] + s["param_write_bytes"]
                mixed_eff.append(moved / s["optim_io_s"] / mixed_bw)
    print("engine, parameters and optimizer state on NVMe (%d rounds)" % len(rounds))
    show("fwd_bwd_s / max(compute, param_read, h2d, d2h)", fb, "<= 1.25")
    show("fwd_bwd_s / sum(compute, param_read, h2d, d2h)", fb_sum)
    show("stall_s / fwd_bwd_s", stall)
    show("step_s / max(cpu_adam, optim_io)", st, "<= 1.25")
    show("step_s / sum(cpu_adam, optim_io)", st_sum)
    show("parameter reads, bytes per busy s / swapbench read", read_eff, ">= 0.8")
    show("optimizer traffic, bytes per busy s / swapbench mixed", mixed_eff, ">= 0.8")
    ratio = []
    for r in rounds:
        cpu, torch = os.path.join(d, "cpu-%s.json" % r), os.path.join(d, "torch-%s.json" % r)
        if os.path.exists(cpu) and os.path.exists(torch):
            a = statistics.median(s["wall_s"] for s in steps(cpu))
            b = statistics.median(s["wall_s"] for s in steps(torch))
            ratio.append(a / b)
    if ratio:
        print("cpu offload against --reference torch, a model that fits (per round)")
        show("step wall_s, zinf cpu offload / LibTorch AdamW", ratio, "<= 1.3")


if __name__ == "__main__":
    main()
