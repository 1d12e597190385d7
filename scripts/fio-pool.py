#!/usr/bin/env python3
"""Pools the rounds of one or more fio-compare runs (their RAW=FILE output).

Usage: scripts/fio-pool.py FILE...

Per configuration, checksum setting and operation, prints the number of
rounds, the median of the per-round ratios swapbench/fio ("paired"), its
quartiles and a bootstrap 95% interval of that median; with checksums on,
also the median ratio of swapbench to fio verifying its own crc32c, and of
fio verifying to fio plain (what checksumming costs fio). A round counts
where every tool of it has a figure; rounds of different files never pair.
"""
import random
import statistics
import sys
from collections import defaultdict


def bootstrap_median(values, draws=4000, seed=1):
    rng = random.Random(seed)
    meds = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(draws))
    return meds[int(0.025 * draws)], meds[int(0.975 * draws) - 1]


def quartiles(values):
    q = sorted(values)
    return q[(len(q) + 3) // 4 - 1], q[(3 * len(q) + 3) // 4 - 1]


def main(paths):
    if not paths:
        sys.exit(__doc__)
    # (bs, qd, size, crc) -> (file, round) -> tool -> (write, read)
    rounds = defaultdict(lambda: defaultdict(dict))
    for path in paths:
        with open(path) as f:
            for n, line in enumerate(f, 1):
                fields = line.split()
                if len(fields) != 8:
                    sys.exit(f"{path}:{n}: expected 8 fields (bs qd size crc round tool write read)")
                bs, qd, size, crc, rnd, tool, write, read = fields
                rounds[(bs, qd, size, crc)][(path, rnd)][tool] = (float(write), float(read))
    print(f"{'bs':<5} {'qd':>3} {'size':>5} {'crc':<4} {'op':<6} {'rounds':>6} {'paired':>7}"
          f" {'quartiles':>10} {'boot95':>10} {'vs_fio_crc':>10} {'fio_crc_cost':>12}")
    for (bs, qd, size, crc), by_round in sorted(rounds.items()):
        tools = ("fio", "zinf", "fiocrc") if crc == "on" else ("fio", "zinf")
        complete = [r for r in by_round.values() if all(t in r for t in tools)]
        for i, op in enumerate(("write", "read")):
            paired = [r["zinf"][i] / r["fio"][i] for r in complete]
            if not paired:
                continue
            lo, hi = bootstrap_median(paired)
            q1, q3 = quartiles(paired)
            extra = ""
            if crc == "on":
                vs = statistics.median(r["zinf"][i] / r["fiocrc"][i] for r in complete)
                cost = statistics.median(r["fiocrc"][i] / r["fio"][i] for r in complete)
                extra = f" {vs:>10.3f} {cost:>12.3f}"
            print(f"{bs:<5} {qd:>3} {size:>5} {crc:<4} {op:<6} {len(paired):>6}"
                  f" {statistics.median(paired):>7.3f} {q1:>4.2f}-{q3:<4.2f} {lo:>4.2f}-{hi:<4.2f}{extra}")


if __name__ == "__main__":
    main(sys.argv[1:])
