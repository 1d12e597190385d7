#!/usr/bin/env python3
"""The soak run: train_gpt for many steps with parameters and optimizer state
on NVMe (configs/zero3_nvme.json) and a checkpoint every --checkpoint-every
steps (two kept), sampling the process's resident memory, open file
descriptors, swap-file size and checkpoint bytes twice a second. After the
warm-up (until the first checkpoint is written, then --warmup of the rest
of the run) each must stay flat: swap-file bytes exactly, file descriptors
within 2 (a checkpoint being written), resident memory within --rss-slack.
Writes every sample to DIR/soak.csv, prints one summary line per series,
and exits 1 if one grew.

  scripts/soak.py [--steps 2000] [--dir DIR] [--build build/release]
"""
import argparse
import csv
import os
import shutil
import subprocess
import sys
import tempfile
import time


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def tree_bytes(root, name=None):
    """Allocated bytes of the files under root (only files called name, if given)."""
    total = 0
    for dirpath, _, files in os.walk(root):
        for f in files:
            if name is None or f == name:
                try:
                    total += os.stat(os.path.join(dirpath, f)).st_blocks * 512
                except FileNotFoundError:
                    pass  # a checkpoint being replaced
    return total


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--checkpoint-every", type=int, default=250)
    ap.add_argument("--warmup", type=float, default=0.1,
                    help="fraction of the samples after the first checkpoint skipped")
    ap.add_argument("--rss-slack", type=float, default=4 << 20,
                    help="bytes resident memory may vary after the warm-up")
    ap.add_argument("--dir", default=None, help="work directory (default: a fresh one in .)")
    ap.add_argument("--build", default=os.path.join(root, "build", "release"))
    a = ap.parse_args()

    work = a.dir or tempfile.mkdtemp(prefix="zinf-soak-", dir=os.getcwd())
    os.makedirs(work, exist_ok=True)
    nvme, ckpt = os.path.join(work, "nvme"), os.path.join(work, "ckpt")
    cmd = [os.path.join(a.build, "examples", "train_gpt"), "--layers", "2", "--hidden", "64",
           "--heads", "4", "--seq", "16", "--batch", "2", "--device-budget", "64M",
           "--steps", str(a.steps), "--print-every", str(max(1, a.steps // 10)),
           "--config", os.path.join(root, "configs", "zero3_nvme.json"), "--nvme-path", nvme,
           "--checkpoint-dir", ckpt, "--checkpoint-every", str(a.checkpoint_every),
           "--checkpoint-keep", "2"]
    print("soak:", " ".join(cmd), flush=True)
    env = dict(os.environ, ZINF_LOG=os.environ.get("ZINF_LOG", "warn"))
    started = time.monotonic()
    proc = subprocess.Popen(cmd, env=env)
    samples = []
    while proc.poll() is None:
        try:
            samples.append((time.monotonic() - started, rss_bytes(proc.pid),
                            len(os.listdir(f"/proc/{proc.pid}/fd")), tree_bytes(nvme, "swap"),
                            tree_bytes(ckpt)))
        except (FileNotFoundError, ProcessLookupError):
            break  # it ended between poll() and the reads
        time.sleep(0.5)
    rc = proc.wait()
    with open(os.path.join(work, "soak.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["seconds", "rss_bytes", "open_fds", "swap_file_bytes", "checkpoint_bytes"])
        w.writerows(samples)
    if rc != 0:
        print(f"soak: train_gpt exited with {rc}", file=sys.stderr)
        return 1
    # Warm-up: until the first checkpoint is on disk (the training loop, its
    # stores and the checkpoint path all running), then --warmup of the rest.
    # The end: the last sample with the swap file there (what follows is the
    # process tearing down).
    begun = next((i for i, s in enumerate(samples) if s[4] > 0), len(samples))
    ended = max((i for i, s in enumerate(samples) if s[3] > 0), default=0) + 1
    steady = samples[begun + int((ended - begun) * a.warmup):ended]
    if len(steady) < 10:
        print(f"soak: only {len(steady)} samples after the warm-up; run more steps", file=sys.stderr)
        return 1
    ok = True
    # A checkpoint being written holds its file and its folder open.
    for col, name, slack in ((1, "rss", a.rss_slack), (2, "open fds", 2),
                             (3, "swap file bytes", 0), (4, "checkpoint bytes", None)):
        values = [s[col] for s in steady]
        lo, hi = min(values), max(values)
        # The checkpoint folder holds two or three checkpoints by turns: its
        # bound is three times the first one, not flatness.
        first = next((s[col] for s in samples if s[col] > 0), 0)
        flat = hi - lo <= slack if slack is not None else hi <= 3 * first
        ok = ok and flat
        print(f"soak: {name}: after warm-up {lo} .. {hi} (first {values[0]}, last {values[-1]})"
              f" {'flat' if flat else 'GREW'}")
    seconds = samples[-1][0]
    print(f"soak: {a.steps} steps in {seconds:.0f} s, {len(samples)} samples in "
          f"{os.path.join(work, 'soak.csv')}: {'flat' if ok else 'NOT FLAT'}")
    if a.dir is None and ok:
        shutil.rmtree(nvme, ignore_errors=True)
        shutil.rmtree(ckpt, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
