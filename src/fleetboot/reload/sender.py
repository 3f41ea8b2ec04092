"""The multicast sender as a process: ``python -m fleetboot.reload.sender ...``.

Serves one stored disk image to one group until the expected receivers have
all ended (verified, failed or dropped as silent); prints one JSON line of
statistics (``sent_ratio`` = record bytes sent / stored image bytes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

from fleetboot.reload.mcast import Sender
from fleetboot.reload.transport import (
    image_info,
    load_records,
    run_sender,
    sender_socket,
    stored_disk_at,
)


def parse_rate(text: str) -> float:
    """'100m' / '1g' / '500k' / '2000000' bits per second."""
    units = {"k": 1e3, "m": 1e6, "g": 1e9}
    t = text.strip().lower().removesuffix("bit").removesuffix("bps")
    if t and t[-1] in units:
        return float(t[:-1]) * units[t[-1]]
    return float(t)


async def serve(image_dir: Path, group: str, port: int, iface_ip: str, rate_bps: float,
                expected: int, session: int, block_size: int, timeout_s: float
                ) -> dict[str, object]:
    disk = stored_disk_at(image_dir)
    records, mapped = load_records(disk)
    sender = Sender(session, records, image_info(disk, block_size), rate_bps,
                    expected=expected)
    sock = sender_socket(iface_ip, port + 1)  # requests come to the port after the group's
    start = time.monotonic()
    try:
        await run_sender(sender, sock, (group, port), timeout_s)
    finally:
        sock.close()
    stored = disk.manifest.stored_size
    stats = sender.stats
    result = {
        "seconds": round(time.monotonic() - start, 3), "stored_bytes": stored,
        "sent_bytes": stats.data_bytes, "sent_ratio": round(stats.data_bytes / stored, 4),
        "requests": stats.requests, "blocks_merged": stats.blocks_merged,
        "blocks_suppressed": stats.blocks_suppressed, "malformed": stats.malformed,
        "receivers": {str(k): m.status for k, m in sender.members.items()},
    }
    del mapped  # the records still point into it; the process ends soon
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fleetboot-send", description=__doc__)
    p.add_argument("--image", required=True, type=Path, help="a stored disk image directory")
    p.add_argument("--group", required=True)
    p.add_argument("--port", type=int, required=True,
                   help="the group's UDP port; requests are answered on PORT+1")
    p.add_argument("--iface-ip", required=True, help="the server's address on the boot network")
    p.add_argument("--rate", default="100m", help="bits per second on the wire (e.g. 100m)")
    p.add_argument("--expected", type=int, default=1, help="receivers to serve before ending")
    p.add_argument("--session", type=int, required=True)
    p.add_argument("--block-size", type=int, default=1400)
    p.add_argument("--timeout", type=float, default=600.0)
    a = p.parse_args(argv)
    result = asyncio.run(serve(a.image, a.group, a.port, a.iface_ip, parse_rate(a.rate),
                               a.expected, a.session, a.block_size, a.timeout))
    print(json.dumps(result), flush=True)
    statuses = list(result["receivers"].values())  # type: ignore[attr-defined]
    return 0 if statuses and all(s == "verified" for s in statuses) else 1


if __name__ == "__main__":
    sys.exit(main())
