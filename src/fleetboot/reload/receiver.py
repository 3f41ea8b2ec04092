"""The reload receiver: ``python -m fleetboot.reload.receiver multicast|http ...``.

Writes an image to a file or block device, verifies every chunk (and with
``--verify-disk`` the whole disk against the manifest's checksum), prints one
JSON line with the result and exits 0 only when everything verified.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys

from fleetboot.reload.mcast import Receiver
from fleetboot.reload.transport import ReceiveResult, parse_hostport, receiver_socket, run_receiver


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fleetboot-receive", description=__doc__)
    sub = p.add_subparsers(dest="transport", required=True)
    m = sub.add_parser("multicast", help="join a deployment's multicast group")
    m.add_argument("--group", required=True, help="multicast group address, e.g. 239.77.0.1")
    m.add_argument("--port", type=int, required=True, help="the group's UDP port")
    m.add_argument("--sender", required=True, help="sender IP:PORT for requests")
    m.add_argument("--iface-ip", required=True, help="this host's address on the boot network")
    m.add_argument("--session", type=int, required=True, help="the deployment's session id")
    m.add_argument("--name", default="", help="this node's name (shown in the progress table)")
    h = sub.add_parser("http", help="fetch the records over HTTP with Range requests")
    h.add_argument("--url", required=True, help="URL of the image directory (manifest.json, "
                   "chunks.bin)")
    for sp in (m, h):
        sp.add_argument("--out", required=True, help="file or block device to write")
        sp.add_argument("--verify-disk", action="store_true",
                        help="read the whole target back and compare the disk checksum")
        sp.add_argument("--zero-gaps", action="store_true",
                        help="write zeros where the image has none (reused block devices)")
        sp.add_argument("--timeout", type=float, default=600.0)
    return p


async def _multicast(args: argparse.Namespace) -> ReceiveResult:
    sock = receiver_socket(args.group, args.port, args.iface_ip)
    receiver = Receiver(args.session, random.SystemRandom().getrandbits(32), name=args.name)
    try:
        return await run_receiver(receiver, sock, parse_hostport(args.sender), args.out,
                                  args.verify_disk, args.zero_gaps, args.timeout)
    finally:
        sock.close()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.transport == "multicast":
        result = asyncio.run(_multicast(args))
    else:
        from fleetboot.reload.httpfetch import fetch_http

        result = fetch_http(args.url, args.out, args.verify_disk, args.zero_gaps, args.timeout)
    print(result.to_json(), flush=True)
    return 0 if result.status == "verified" else 1


if __name__ == "__main__":
    sys.exit(main())
