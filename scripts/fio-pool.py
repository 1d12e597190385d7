#!/usr/bin/env python3
"""Summarizes the rounds of one or more fio-compare runs (their RAW=FILE output).

Usage: scripts/fio-pool.py FILE...

Per configuration, checksum setting and operation: the number of rounds,
each tool's median GB/s and their ratio, the median of the per-round
ratios swapbench/fio ("paired") with its quartiles and a bootstrap 95%
interval, and the range of each tool's rounds; with checksums on, also fio
verifying its own crc32c: its median, the median per-round ratio of
swapbench to it, and of it to plain fio (what checksumming costs fio).
A round counts where every tool of it has a figure; rounds of different
files never pair, so several files pool their rounds.
"""
import random
import statistics
import sys

median = statistics.median


def bootstrap_median(values, draws=4000, seed=1):
    rng = random.Random(seed)
    meds = sorted(median(rng.choices(values, k=len(values))) for _ in range(draws))
    return meds[int(0.025 * draws)], meds[int(0.975 * draws) - 1]


def quartiles(values):
    q = sorted(values)
    return q[(len(q) + 3) // 4 - 1], q[(3 * len(q) + 3) // 4 - 1]


def span(lo_hi):
    return f"{lo_hi[0]:.2f}-{lo_hi[1]:.2f}"


def line(cells):
    """The first five cells name the row, the rest are figures."""
    return " ".join(f"{c:>10}" if k > 4 else f"{c:<5}" for k, c in enumerate(cells))


def read_rounds(paths):
    """(bs, qd, size, crc) -> (file, round) -> tool -> (write, read), in file order."""
    rounds = {}
    for path in paths:
        with open(path) as f:
            for n, line in enumerate(f, 1):
                fields = line.split()
                if len(fields) != 8:
                    sys.exit(f"{path}:{n}: expected 8 fields (bs qd size crc round tool write read)")
                bs, qd, size, crc, rnd, tool, write, read = fields
                by_round = rounds.setdefault((bs, qd, size, crc), {})
                by_round.setdefault((path, rnd), {})[tool] = (float(write), float(read))
    return rounds


def main(paths):
    if not paths:
        sys.exit(__doc__)
    columns = ("op", "bs", "qd", "size", "crc", "rounds", "fio_GB/s", "zinf_GB/s", "ratio", "paired",
               "quartiles", "boot95", "fio_range", "zinf_range", "fio_crc", "vs_fio_crc", "crc_cost")
    print(line(columns))
    for (bs, qd, size, crc), by_round in read_rounds(paths).items():
        tools = ("fio", "zinf", "fiocrc") if crc == "on" else ("fio", "zinf")
        complete = [r for r in by_round.values() if all(t in r for t in tools)]
        if not complete:
            continue
        for i, op in enumerate(("write", "read")):
            fio = [r["fio"][i] for r in complete]
            zinf = [r["zinf"][i] for r in complete]
            paired = [z / f for z, f in zip(zinf, fio)]
            row = [op, bs, qd, size, crc, f"{len(complete)}", f"{median(fio):.3f}",
                   f"{median(zinf):.3f}", f"{median(zinf) / median(fio):.2f}",
                   f"{median(paired):.3f}", span(quartiles(paired)), span(bootstrap_median(paired)),
                   span((min(fio), max(fio))), span((min(zinf), max(zinf)))]
            if crc == "on":
                fiocrc = [r["fiocrc"][i] for r in complete]
                row += [f"{median(fiocrc):.3f}", f"{median(z / c for z, c in zip(zinf, fiocrc)):.3f}",
                        f"{median(c / f for c, f in zip(fiocrc, fio)):.3f}"]
            print(line(row))


if __name__ == "__main__":
    main(sys.argv[1:])
