"""Picture of ``bench/reload.py`` results: seconds per N for each transport and loss.

Run: ``.venv/bin/python bench/reload_plot.py RESULTS.log docs/img/reload.png`` (reads the
``RESULT reload ...`` lines of one or more runs; the last line per (n, loss) counts).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

_LINE = re.compile(r"RESULT reload (.*)")


def parse(text: str) -> dict[tuple[int, float], dict[str, float]]:
    rows: dict[tuple[int, float], dict[str, float]] = {}
    for m in _LINE.finditer(text):
        kv = dict(item.split("=", 1) for item in m.group(1).split())
        rows[(int(kv["n"]), float(kv["loss"]))] = {k: float(v) for k, v in kv.items()}
    return rows


def main(log: str, out: str) -> None:
    rows = parse(Path(log).read_text())
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, loss in zip(axes, (0.0, 2.0), strict=True):
        ns = sorted(n for n, p in rows if p == loss)
        for key, label in (("fleetboot_s", "Fleetboot multicast"), ("udpcast_s", "udpcast"),
                           ("http_s", "nginx + curl (HTTP unicast)")):
            ax.plot(ns, [rows[(n, loss)][key] for n in ns], marker="o", label=label)
        ax.set_title(f"{loss:g} % loss at the receivers")
        ax.set_xlabel("receivers (N)")
        ax.set_xscale("log", base=2)
        ax.set_xticks(ns, [str(n) for n in ns])
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("seconds until every receiver is done")
    axes[0].legend()
    fig.suptitle("256 MiB disk image (70 MiB stored), 100 Mbit/s cap, 2 loaded cores")
    fig.tight_layout()
    fig.savefig(out, dpi=90)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
