"""The DHCPv4 + PXE server state machine. Pure: bytes and time in, replies out.

``DhcpEngine.handle`` takes one received datagram, the address of the interface
it arrived on and the current time, and returns a :class:`Reply` (bytes, where
to send them, and the lease record that must be durable before an ACK leaves)
or None. It never touches sockets, clocks, files or the database; the asyncio
adapter in ``fleetboot.server.dhcp`` does that.

Clients are identified by their hardware address (chaddr): PXE firmware, iPXE
and the installed OS use different client identifiers on the same NIC. PXE
answers ride in the same OFFER/ACK (siaddr, file, options 60/43/66/67), so no
proxyDHCP round is needed unless ``settings.proxy`` asks for that mode.

Hot path: option blocks are cached per (message type, subnet, server, boot
answer, hostname, parameter request list), so a typical reply is one
``struct.pack`` of the header plus cached bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from fleetboot.identity.core import BOOT_SERVER, REQUESTED, LinkBook
from fleetboot.protocols.dhcp import options as o
from fleetboot.protocols.dhcp.codec import (
    HEADER,
    DhcpDecodeError,
    DhcpEncodeError,
    DhcpPacket,
    decode,
    encode,
    max_payload,
    option_items,
)
from fleetboot.protocols.dhcp.leases import LeaseInfo, LeaseTable
from fleetboot.protocols.dhcp.settings import ArchBoot, DhcpSettings
from fleetboot.protocols.dhcp.view import DhcpView, HostInfo, ReservationInfo, SubnetInfo
from fleetboot.server.events import BootEvent, EventSink

BROADCAST = "255.255.255.255"
CACHE_LIMIT = 4096
SEEN_LIMIT = 200_000
MIN_LEASE = o.MIN_LEASE_SECONDS
SMALLEST_LIMIT = o.MIN_MAX_MESSAGE_SIZE - o.IP_UDP_HEADERS  # every client accepts this much


class LeaseRecord(NamedTuple):
    """A change the lease journal must make durable. ``bind`` upserts, ``free`` deletes."""

    op: str  # "bind" | "free"
    addr: int
    mac: bytes
    expires: float = 0.0
    starts: float = 0.0
    subnet_id: int | None = None
    client_id: bytes | None = None
    hostname: str | None = None


@dataclass(slots=True)
class Reply:
    data: bytes | None  # None: nothing to send, only ``record`` to journal (RELEASE/DECLINE)
    dest: tuple[str, int] = (BROADCAST, 68)
    arp: tuple[int, bytes] | None = None  # (yiaddr, chaddr): unicast to a client with no address
    record: LeaseRecord | None = None  # an ACK may leave only once this is committed
    msg_type: int = 0
    event: BootEvent | None = None  # the "sent" event, emitted by the adapter when it sends


class Boot(NamedTuple):
    """The boot part of an answer: next-server, the file field and options 60/43/66/67."""

    siaddr: int
    file: bytes
    options: tuple[tuple[int, bytes], ...]
    label: str  # for events: "pxe", "ipxe", "http"


DropHook = Callable[[str, str], None]

IPXE_NO_PXEDHCP = bytes((176, 1, 1))  # iPXE encapsulated sub-option 176, length 1, value 1


class DhcpEngine:
    def __init__(self, settings: DhcpSettings, view: DhcpView, leases: LeaseTable | None = None,
                 *, server_addresses: tuple[int, ...] = (), events: EventSink | None = None,
                 on_drop: DropHook | None = None, book: LinkBook | None = None) -> None:
        self.settings = settings
        # Proxy mode: what clients say about their addresses, for node identity.
        self.book = book
        self.leases = leases if leases is not None else LeaseTable()
        self.events = events
        self.on_drop = on_drop
        self.counters: dict[str, int] = {}
        self._server_id = o.ip_int(settings.server_id) if settings.server_id else 0
        self._next_server = o.ip_int(settings.next_server) if settings.next_server else 0
        self._server_addresses = server_addresses
        self._blocks: dict[tuple[object, ...], bytes] = {}
        self._boots: dict[tuple[object, ...], Boot | None] = {}
        self._seen: dict[bytes, int] = {}
        self._texts: dict[int, str] = {}
        self._sids: dict[int, bytes] = {}
        self.view = view
        self.set_view(view)

    def set_settings(self, settings: DhcpSettings) -> None:
        """Take new answer policies (SIGHUP); replies built from the old ones are dropped.
        Addresses (server id, next server) are fixed at start."""
        self.settings = settings
        self._blocks.clear()
        self._boots.clear()

    # --- inventory ---------------------------------------------------------------------------

    def set_view(self, view: DhcpView) -> None:
        """Swap in a new inventory view (atomic: one assignment between packets)."""
        excluded = set(view.reserved) | set(self._server_addresses)
        for subnet in view.subnets:
            excluded.update(a for a in (subnet.router, subnet.next_server) if a)
        self.leases.configure(view.subnets, excluded)
        self._blocks.clear()
        self._boots.clear()
        self.view = view

    def lease_by_address(self, ip: str | int) -> LeaseInfo | None:
        info = self.leases.lease_by_address(ip)
        if info is None:
            return None
        host = self.view.hosts.get(bytes.fromhex(info.mac.replace(":", "")))
        return info._replace(node=host.node) if host is not None else info

    # --- bookkeeping -------------------------------------------------------------------------

    def _count(self, key: str) -> None:
        counters = self.counters
        counters[key] = counters.get(key, 0) + 1

    def _drop(self, reason: str, detail: str) -> None:
        self._count("drop." + reason)
        if self.on_drop is not None:
            self.on_drop(reason, detail)

    def _sid_bytes(self, sid: int) -> bytes:
        raw = self._sids.get(sid)
        if raw is None:
            raw = self._sids[sid] = o.ip_bytes(sid)
        return raw

    def _text(self, addr: int) -> str:
        text = self._texts.get(addr)
        if text is None:
            if len(self._texts) > CACHE_LIMIT:
                self._texts.clear()
            text = self._texts[addr] = o.ip_text(addr)
        return text

    # --- entry point -------------------------------------------------------------------------

    def handle(self, data: bytes, local: int, now: float, *, proxy_port: bool = False,
               source: tuple[str, int] | None = None) -> Reply | None:
        """One received datagram -> at most one reply.

        ``local`` is the address of the interface it came in on (0 if unknown);
        ``proxy_port`` is True for the PXE boot-server port 4011 in proxy mode.
        """
        counters = self.counters
        counters["rx"] = counters.get("rx", 0) + 1
        try:
            pkt = decode(data)
        except DhcpDecodeError as exc:
            self._drop("malformed", str(exc))
            return None
        mt_opt = pkt.options.get(o.MESSAGE_TYPE)
        if pkt.op != o.BOOTREQUEST or mt_opt is None or len(mt_opt) != 1:
            self._drop("not_dhcp_request", "not a DHCP request (BOOTREPLY, BOOTP or no option 53)")
            return None
        if pkt.htype != 1 or pkt.hlen != 6:
            self._drop("hardware", f"hardware type {pkt.htype}/{pkt.hlen}: only Ethernet")
            return None
        mt = mt_opt[0]
        mac = pkt.chaddr[:6]
        # A repeated (xid, type) from one MAC is a retransmission: firmware timing shows here.
        key = (pkt.xid << 4) | mt
        seen = self._seen
        again = seen.get(mac) == key
        if again:
            self._count("rx.retransmission")
        else:
            if len(seen) >= SEEN_LIMIT:
                seen.clear()
            seen[mac] = key
        if self.events is not None:
            self._emit_rx(pkt, mt, mac, again, now)
        sid = self._server_id or local
        if not sid:
            self._drop("no_server_id",
                       "no server address: give the receiving interface an IPv4 address")
            return None
        if proxy_port:
            return self._proxy_boot_request(pkt, mt, mac, sid, now, source)
        if self.settings.proxy:
            if mt == o.DISCOVER:
                return self._proxy_offer(pkt, mac, sid, local, now)
            self._observe(pkt, mt, mac, now, source)
            return None
        if mt == o.DISCOVER:
            return self._discover(pkt, mac, sid, local, now)
        if mt == o.REQUEST:
            return self._request(pkt, mac, sid, local, now)
        if mt == o.RELEASE:
            return self._release(pkt, mac, sid)
        if mt == o.DECLINE:
            return self._decline(pkt, mac, sid, now)
        if mt == o.INFORM:
            return self._inform(pkt, mac, sid, local, now)
        self._drop("message_type", f"message type {mt} is not handled by a DHCPv4 server")
        return None

    def _emit_rx(self, pkt: DhcpPacket, mt: int, mac: bytes, again: bool, now: float) -> None:
        assert self.events is not None
        requested = pkt.options.get(o.REQUESTED_ADDRESS)
        addr = pkt.ciaddr or (o.U32.unpack(requested)[0] if requested and len(requested) == 4
                              else 0)
        detail = {"dir": "rx", "xid": pkt.xid, "secs": pkt.secs, "retransmit": again,
                  "vendor_class": pkt.options.get(o.VENDOR_CLASS, b"").decode("latin-1"),
                  "arch": _arch(pkt.options.get(o.CLIENT_ARCH), pkt.options.get(o.VENDOR_CLASS)),
                  "ipxe": _is_ipxe(pkt), "relay": o.ip_text(pkt.giaddr) if pkt.giaddr else None}
        server = pkt.options.get(o.SERVER_ID)
        if server is not None and len(server) == 4:
            detail["server_id"] = o.ip_text(o.U32.unpack(server)[0])  # the server it chose
        self.events(BootEvent(now, "dhcp", o.MESSAGE_NAMES.get(mt, str(mt)), o.mac_text(mac),
                              o.ip_text(addr) if addr else None, detail))

    # --- who is asking ----------------------------------------------------------------------

    def _subnet(self, pkt: DhcpPacket, local: int) -> SubnetInfo | None:
        view = self.view
        if pkt.giaddr:
            return view.subnet_for(pkt.giaddr)
        subnet = view.subnet_for(local) if local else None
        if subnet is None and pkt.ciaddr:
            subnet = view.subnet_for(pkt.ciaddr)
        return subnet

    def _admit(self, pkt: DhcpPacket, mac: bytes, subnet: SubnetInfo, sid: int
               ) -> tuple[bool, Boot | None, str | None]:
        """Policy: may this client be answered, does it get a boot file, what hostname."""
        host: HostInfo | None = self.view.hosts.get(mac)
        res: ReservationInfo | None = self.view.reservations.get(mac)
        if host is None and res is None:
            if self.settings.unknown_clients == "ignore":
                self._count("ignored.unknown_client")
                return False, None, None
            boot = self._boot(pkt, subnet, sid) if self.settings.boot_unknown else None
            return True, boot, None
        boot = self._boot(pkt, subnet, sid)
        if host is not None and not host.is_boot:
            policy = self.settings.non_boot_interfaces
            if policy == "ignore" or (policy == "ignore_boot" and boot is not None):
                self._count("ignored.non_boot_interface")
                return False, None, None
            if boot is not None:
                self._count("boot.withheld_non_boot_interface")
            boot = None
        hostname = (res.hostname if res is not None and res.hostname else None) or (
            host.node if host is not None else None)
        return True, boot, hostname

    def _boot(self, pkt: DhcpPacket, subnet: SubnetInfo, sid: int) -> Boot | None:
        opts = pkt.options
        vendor = opts.get(o.VENDOR_CLASS)
        if vendor is None:
            if o.USER_CLASS not in opts and o.IPXE_ENCAP not in opts:
                return None  # the common case under load: an OS client, no boot answer
            vendor = b""
        ipxe = _is_ipxe(pkt)
        if not (ipxe or vendor.startswith(o.PXE_CLIENT) or vendor.startswith(o.HTTP_CLIENT)):
            return None
        key = (vendor, ipxe, opts.get(o.CLIENT_ARCH), sid, subnet.next_server)
        if key in self._boots:
            return self._boots[key]
        boot = self._make_boot(vendor, ipxe, _arch(opts.get(o.CLIENT_ARCH), vendor), subnet, sid)
        if len(self._boots) > CACHE_LIMIT:
            self._boots.clear()
        self._boots[key] = boot
        return boot

    def _make_boot(self, vendor: bytes, ipxe: bool, arch: int, subnet: SubnetInfo,
                   sid: int) -> Boot | None:
        s = self.settings
        next_server = subnet.next_server or self._next_server or sid
        http_host = s.http_host or o.ip_text(next_server)
        if ipxe and not vendor.startswith(o.HTTP_CLIENT):
            # iPXE must not be given iPXE again: hand it its per-node script instead.
            text = f"http://{http_host}:{s.http_port}{s.ipxe_script_path}"
            if s.proxy:
                # iPXE expands this to the MAC it booted through: a claim the server
                # checks against the link (fleetboot.identity), never proof on its own.
                text += "?mac=${netX/mac}"
            url = text.encode()
            # iPXE option 175.176 (no-pxedhcp) = 1: no ProxyDHCP exists, so iPXE must not
            # spend ~3 s waiting for one (that wait also shows up as a DISCOVER retransmit).
            return Boot(next_server, url if len(url) < 128 else b"",
                        ((o.BOOTFILE_NAME, url), (o.IPXE_ENCAP, IPXE_NO_PXEDHCP)), "ipxe")
        entry: ArchBoot | None = s.architectures.get(arch)
        if vendor.startswith(o.HTTP_CLIENT):
            if entry is None or not entry.http_file:
                self._drop("unknown_arch", f"no http_file for HTTP-boot client arch {arch}")
                return None
            url = _http_url(entry.http_file, http_host, s.http_port, s.http_files_path).encode()
            return Boot(next_server, url if len(url) < 128 else b"",
                        ((o.VENDOR_CLASS, o.HTTP_CLIENT), (o.BOOTFILE_NAME, url)), "http")
        if entry is None or not entry.tftp_file:
            self._drop("unknown_arch", f"no tftp_file for PXE client arch {arch}")
            return None
        name = entry.tftp_file.format(http_host=http_host, http_port=s.http_port).encode()
        return Boot(next_server, name if len(name) < 128 else b"",
                    ((o.VENDOR_CLASS, o.PXE_CLIENT), (o.VENDOR_SPECIFIC, o.PXE_VENDOR_OPTIONS),
                     (o.TFTP_SERVER_NAME, o.ip_text(next_server).encode()),
                     (o.BOOTFILE_NAME, name)), "pxe")

    # --- addresses ----------------------------------------------------------------------------

    def _allowed(self, subnet: SubnetInfo, addr: int, mac: bytes, now: float) -> bool:
        """May ``mac`` hold ``addr`` on ``subnet`` (reservation, or free pool address)?"""
        res = self.view.reservations.get(mac)
        if res is not None and res.subnet_id == subnet.id and addr == res.address:
            return self.leases.usable(addr, mac, now)
        return (subnet.in_pool(addr) and addr not in self.view.reserved
                and not self.leases.excluded(addr) and self.leases.usable(addr, mac, now))

    def _choose(self, pkt: DhcpPacket, subnet: SubnetInfo, mac: bytes, now: float) -> int | None:
        res = self.view.reservations.get(mac)
        if res is not None and res.subnet_id == subnet.id:
            if self.leases.usable(res.address, mac, now):
                return res.address
            self._drop("reservation_in_use", f"reserved {o.ip_text(res.address)} for "
                       f"{o.mac_text(mac)} is leased to another client; using the pool")
        lease = self.leases.get(mac)
        if lease is not None and subnet.contains(lease.addr) and self._allowed(
                subnet, lease.addr, mac, now):
            return lease.addr
        wanted = pkt.options.get(o.REQUESTED_ADDRESS)
        if wanted is not None and len(wanted) == 4:
            addr = o.U32.unpack(wanted)[0]
            if subnet.contains(addr) and self._allowed(subnet, addr, mac, now):
                return addr
        return self.leases.allocate(subnet.id, mac, now)

    def _lease_time(self, pkt: DhcpPacket, subnet: SubnetInfo) -> int:
        asked = pkt.options.get(o.LEASE_TIME)
        if asked is not None and len(asked) == 4:
            return max(MIN_LEASE, min(o.U32.unpack(asked)[0], subnet.lease_seconds))
        return subnet.lease_seconds

    # --- message handlers -----------------------------------------------------------------------

    def _discover(self, pkt: DhcpPacket, mac: bytes, sid: int, local: int,
                  now: float) -> Reply | None:
        subnet = self._subnet(pkt, local)
        if subnet is None:
            self._drop("no_subnet", f"DISCOVER from {o.mac_text(mac)}: no subnet for relay "
                       f"{o.ip_text(pkt.giaddr)} / interface {o.ip_text(local)}")
            return None
        ok, boot, hostname = self._admit(pkt, mac, subnet, sid)
        if not ok:
            return None
        addr = self._choose(pkt, subnet, mac, now)
        if addr is None:
            self._drop("pool_exhausted", f"subnet {subnet.describe()}: pool exhausted, "
                       f"no address to offer {o.mac_text(mac)}")
            return None
        self.leases.offer(mac, addr, subnet.id, now, self.settings.offer_hold_s)
        return self._reply(o.OFFER, pkt, mac, subnet, sid, addr, self._lease_time(pkt, subnet),
                           boot, hostname, now)

    def _request(self, pkt: DhcpPacket, mac: bytes, sid: int, local: int,
                 now: float) -> Reply | None:
        opts = pkt.options
        server = opts.get(o.SERVER_ID)
        wanted = opts.get(o.REQUESTED_ADDRESS)
        if server is not None:  # SELECTING
            if server != self._sid_bytes(sid):
                self.leases.withdraw_offer(mac)
                self._count("ignored.other_server")
                return None
            state, addr = "selecting", _addr(wanted) or pkt.ciaddr
        elif wanted is not None:
            state, addr = "init-reboot", _addr(wanted)
        else:
            state, addr = "renewing", pkt.ciaddr
        if not addr:
            self._drop("bad_request", f"REQUEST from {o.mac_text(mac)} names no address")
            return None
        subnet = self._subnet(pkt, local)
        if subnet is None:
            self._count("ignored.no_subnet")
            return None
        ok, boot, hostname = self._admit(pkt, mac, subnet, sid)
        if not ok:
            return None
        if subnet.contains(addr) and self._allowed(subnet, addr, mac, now):
            return self._ack(pkt, mac, subnet, sid, addr, boot, hostname, now)
        if state != "selecting" and not self.settings.authoritative:
            self._count("ignored.not_authoritative")
            return None
        if state == "selecting":
            self.leases.withdraw_offer(mac)
        self._count("tx.nak." + state)
        return self._nak(pkt, mac, sid, "requested address is not available", now)

    def _ack(self, pkt: DhcpPacket, mac: bytes, subnet: SubnetInfo, sid: int, addr: int,
             boot: Boot | None, hostname: str | None, now: float) -> Reply:
        seconds = self._lease_time(pkt, subnet)
        lease = self.leases.bind(mac, addr, subnet.id, now, seconds,
                                 pkt.options.get(o.CLIENT_ID), hostname or _hostname(pkt))
        record = LeaseRecord("bind", addr, mac, lease.expires, lease.starts, subnet.id,
                             lease.client_id, lease.hostname)
        return self._reply(o.ACK, pkt, mac, subnet, sid, addr, seconds, boot, hostname, now,
                           record)

    def _release(self, pkt: DhcpPacket, mac: bytes, sid: int) -> Reply | None:
        server = pkt.options.get(o.SERVER_ID)
        if server is not None and server != o.ip_bytes(sid):
            self._count("ignored.other_server")
            return None
        if not self.leases.release(mac, pkt.ciaddr):
            self._count("ignored.release_unknown")
            return None
        self._count("released")
        return Reply(None, record=LeaseRecord("free", pkt.ciaddr, mac), msg_type=o.RELEASE)

    def _decline(self, pkt: DhcpPacket, mac: bytes, sid: int, now: float) -> Reply | None:
        server = pkt.options.get(o.SERVER_ID)
        addr = _addr(pkt.options.get(o.REQUESTED_ADDRESS))
        if (server is not None and server != o.ip_bytes(sid)) or not addr:
            self._count("ignored.decline")
            return None
        if not self.leases.decline(mac, addr, now, self.settings.decline_hold_s):
            self._count("ignored.decline")
            return None
        self._drop("declined", f"{o.mac_text(mac)} declined {o.ip_text(addr)}: the address is "
                   "in use by another host; parked")
        return Reply(None, record=LeaseRecord("free", addr, mac), msg_type=o.DECLINE)

    def _inform(self, pkt: DhcpPacket, mac: bytes, sid: int, local: int,
                now: float) -> Reply | None:
        subnet = self._subnet(pkt, local)
        if subnet is None or not pkt.ciaddr:
            self._count("ignored.inform")
            return None
        ok, boot, hostname = self._admit(pkt, mac, subnet, sid)
        if not ok:
            return None
        return self._reply(o.ACK, pkt, mac, subnet, sid, 0, 0, boot, hostname, now)

    # --- proxyDHCP --------------------------------------------------------------------------------

    def _observe(self, pkt: DhcpPacket, mt: int, mac: bytes, now: float,
                 source: tuple[str, int] | None) -> None:
        """Proxy mode: note which address a client asks the site's server for (identity)."""
        book = self.book
        if book is None:
            return
        if mt == o.REQUEST or mt == o.INFORM:
            addr = _addr(pkt.options.get(o.REQUESTED_ADDRESS)) or pkt.ciaddr
            if addr:
                server = _addr(pkt.options.get(o.SERVER_ID))
                from_link = not pkt.giaddr and source is not None and source[0] == "0.0.0.0"
                book.saw(REQUESTED, o.mac_text(mac), self._text(addr), now,
                         self._text(server) if server else None, from_link=from_link)
                self._count("observed.request")
        elif mt == o.RELEASE and pkt.ciaddr:
            book.drop(o.mac_text(mac), self._text(pkt.ciaddr))
        elif mt == o.DECLINE:
            addr = _addr(pkt.options.get(o.REQUESTED_ADDRESS))
            if addr:
                book.drop(o.mac_text(mac), self._text(addr))

    def _proxy_offer(self, pkt: DhcpPacket, mac: bytes, sid: int, local: int,
                     now: float) -> Reply | None:
        """Proxy mode, port 67: answer PXE DISCOVERs with boot information and no address."""
        subnet = self._subnet(pkt, local) or _ANY_SUBNET
        ok, boot, _ = self._admit(pkt, mac, subnet, sid)
        if not ok or boot is None:
            self._count("ignored.proxy_not_pxe")
            return None
        return self._reply(o.OFFER, pkt, mac, subnet, sid, 0, 0, boot, None, now, proxy=True)

    def _proxy_boot_request(self, pkt: DhcpPacket, mt: int, mac: bytes, sid: int, now: float,
                            source: tuple[str, int] | None) -> Reply | None:
        """Port 4011: the client, now holding an address, asks the boot server directly."""
        if mt not in (o.REQUEST, o.INFORM):
            self._count("ignored.proxy_message")
            return None
        if self.book is not None and pkt.ciaddr and source is not None \
                and source[0] == self._text(pkt.ciaddr):
            # Asked from the address it holds: the client itself says which one.
            self.book.saw(BOOT_SERVER, o.mac_text(mac), source[0], now)
        subnet = self.view.subnet_for(pkt.ciaddr) if pkt.ciaddr else None
        ok, boot, _ = self._admit(pkt, mac, subnet or _ANY_SUBNET, sid)
        if not ok or boot is None:
            self._count("ignored.proxy_not_pxe")
            return None
        reply = self._reply(o.ACK, pkt, mac, subnet or _ANY_SUBNET, sid, 0, 0, boot, None, now,
                            proxy=True)
        if source is not None:
            reply.dest, reply.arp = source, None
        return reply

    # --- building replies -------------------------------------------------------------------------

    def _nak(self, pkt: DhcpPacket, mac: bytes, sid: int, why: str, now: float) -> Reply:
        reply = DhcpPacket(o.BOOTREPLY, 1, 6, 0, pkt.xid, 0, pkt.flags, 0, 0, 0, pkt.giaddr,
                           pkt.chaddr, b"", b"", {o.MESSAGE_TYPE: bytes((o.NAK,)),
                                                  o.SERVER_ID: o.ip_bytes(sid),
                                                  o.MESSAGE: why.encode()})
        relay = pkt.options.get(o.RELAY_AGENT_INFO)
        if relay is not None:
            reply.options[o.RELAY_AGENT_INFO] = relay
        if pkt.giaddr:
            reply.flags |= o.BROADCAST_FLAG  # RFC 2131 4.3.2: relay must broadcast the NAK
            dest = (self._text(pkt.giaddr), self.settings.port)
        else:
            dest = (BROADCAST, self.settings.client_port)
        return Reply(encode(reply), dest, None, None, o.NAK,
                     self._tx_event(o.NAK, mac, pkt, 0, None, now))

    def _block(self, mt: int, pkt: DhcpPacket, subnet: SubnetInfo, sid: int, seconds: int,
               boot: Boot | None, hostname: str | None, proxy: bool) -> bytes:
        prl = pkt.options.get(o.PARAMETER_REQUEST_LIST, b"")
        key = (mt, subnet.id, sid, seconds, boot, hostname, prl, proxy)
        block = self._blocks.get(key)
        if block is None:
            block = self._build_block(mt, subnet, sid, seconds, boot, hostname, prl, proxy)
            if len(self._blocks) > CACHE_LIMIT:
                self._blocks.clear()
            self._blocks[key] = block
        return block

    def _build_block(self, mt: int, subnet: SubnetInfo, sid: int, seconds: int,
                     boot: Boot | None, hostname: str | None, prl: bytes, proxy: bool) -> bytes:
        first = [(o.MESSAGE_TYPE, bytes((mt,))), (o.SERVER_ID, o.ip_bytes(sid))]
        opts: dict[int, bytes] = {}
        if seconds:
            opts[o.LEASE_TIME] = o.u32(seconds)
            opts[o.RENEWAL_TIME] = o.u32(seconds // 2)
            opts[o.REBINDING_TIME] = o.u32(seconds * 7 // 8)
        if not proxy:
            opts[o.SUBNET_MASK] = o.ip_bytes(subnet.mask)
            if subnet.router:
                opts[o.ROUTER] = o.ip_bytes(subnet.router)
            if subnet.dns:
                opts[o.DNS_SERVERS] = b"".join(o.ip_bytes(d) for d in subnet.dns)
            if subnet.domain:
                opts[o.DOMAIN_NAME] = subnet.domain.encode()
            if subnet.mtu:
                opts[o.INTERFACE_MTU] = o.U16.pack(subnet.mtu)
            opts[o.BROADCAST_ADDRESS] = o.ip_bytes(subnet.broadcast)
            if hostname:
                opts[o.HOSTNAME] = hostname.encode()[:63]
        if boot is not None:
            opts.update(boot.options)
            if proxy and o.VENDOR_SPECIFIC not in opts:
                # A proxy offer is recognised by option 60 PXEClient plus option 43.
                opts[o.VENDOR_CLASS] = o.PXE_CLIENT
                opts[o.VENDOR_SPECIFIC] = o.PXE_VENDOR_OPTIONS
        ordered = [(code, opts.pop(code)) for code in prl if code in opts]
        return option_items(first + ordered + list(opts.items()))

    def _reply(self, mt: int, pkt: DhcpPacket, mac: bytes, subnet: SubnetInfo, sid: int,
               yiaddr: int, seconds: int, boot: Boot | None, hostname: str | None, now: float,
               record: LeaseRecord | None = None, proxy: bool = False) -> Reply:
        block = self._block(mt, pkt, subnet, sid, seconds, boot, hostname, proxy)
        relay = pkt.options.get(o.RELAY_AGENT_INFO)
        if relay is not None:  # RFC 3046: echo option 82, last before END
            block += option_items(((o.RELAY_AGENT_INFO, relay),))
        siaddr, file = (boot.siaddr, boot.file) if boot is not None else (0, b"")
        ciaddr = pkt.ciaddr if mt == o.ACK else 0
        data = HEADER.pack(o.BOOTREPLY, 1, 6, 0, pkt.xid, 0, pkt.flags, ciaddr, yiaddr, siaddr,
                           pkt.giaddr, pkt.chaddr, b"", file, o.MAGIC_COOKIE) + block + b"\xff"
        size = len(data)
        if size < o.MIN_PACKET:
            data += bytes(o.MIN_PACKET - size)
        elif size > SMALLEST_LIMIT and size > max_payload(pkt.options.get(o.MAX_MESSAGE_SIZE)):
            data = self._overloaded(mt, pkt, block, siaddr, file, ciaddr, yiaddr)
        dest, arp = self._destination(pkt, mac, yiaddr, ciaddr)
        counters = self.counters
        counters["tx"] = counters.get("tx", 0) + 1
        event = self._tx_event(mt, mac, pkt, yiaddr, boot, now) if self.events else None
        return Reply(data, dest, arp, record, mt, event)

    def _overloaded(self, mt: int, pkt: DhcpPacket, block: bytes, siaddr: int, file: bytes,
                    ciaddr: int, yiaddr: int) -> bytes:
        opts: dict[int, bytes] = {}
        pos = 0
        while pos < len(block):  # our own block: well formed by construction
            code, size = block[pos], block[pos + 1]
            opts[code] = opts.get(code, b"") + block[pos + 2 : pos + 2 + size]
            pos += 2 + size
        out = DhcpPacket(o.BOOTREPLY, 1, 6, 0, pkt.xid, 0, pkt.flags, ciaddr, yiaddr, siaddr,
                         pkt.giaddr, pkt.chaddr, b"", file, opts)
        limit = max_payload(pkt.options.get(o.MAX_MESSAGE_SIZE))
        try:
            return encode(out, limit)
        except DhcpEncodeError:
            self._count("tx.oversized")
            return encode(out)  # better too big than nothing: most clients accept it

    def _destination(self, pkt: DhcpPacket, mac: bytes, yiaddr: int, ciaddr: int
                     ) -> tuple[tuple[str, int], tuple[int, bytes] | None]:
        """RFC 2131 4.1: relay, then ciaddr, then broadcast flag, else unicast to yiaddr."""
        if pkt.giaddr:
            return (self._text(pkt.giaddr), self.settings.port), None
        if ciaddr:
            return (self._text(ciaddr), self.settings.client_port), None
        if pkt.flags & o.BROADCAST_FLAG or not yiaddr:
            return (BROADCAST, self.settings.client_port), None
        # The client has no address yet: the adapter installs an ARP entry for yiaddr first.
        return (self._text(yiaddr), self.settings.client_port), (yiaddr, mac)

    def _tx_event(self, mt: int, mac: bytes, pkt: DhcpPacket, yiaddr: int, boot: Boot | None,
                  now: float) -> BootEvent | None:
        if self.events is None:
            return None
        detail: dict[str, object] = {"dir": "tx", "xid": pkt.xid}
        if boot is not None:
            detail["boot"] = boot.label
            detail["file"] = dict(boot.options).get(o.BOOTFILE_NAME, b"").decode("latin-1")
        return BootEvent(now, "dhcp", o.MESSAGE_NAMES[mt], o.mac_text(mac),
                         o.ip_text(yiaddr) if yiaddr else None, detail)


_ANY_SUBNET = SubnetInfo(0, "proxy", 0, 0, 0)


def _addr(raw: bytes | None) -> int:
    return o.U32.unpack(raw)[0] if raw is not None and len(raw) == 4 else 0


def _is_ipxe(pkt: DhcpPacket) -> bool:
    user = pkt.options.get(o.USER_CLASS)
    return (user is not None and o.IPXE_USER_CLASS in user) or o.IPXE_ENCAP in pkt.options


def _arch(raw: bytes | None, vendor: bytes | None) -> int:
    """Client architecture: option 93 (first entry), else ``Arch:NNNNN`` in option 60, else BIOS."""
    if raw is not None and len(raw) >= 2:
        return int(o.U16.unpack_from(raw)[0])
    if vendor and b":Arch:" in vendor:
        digits = vendor.split(b":Arch:", 1)[1][:5]
        if digits.isdigit():
            return int(digits)
    return 0


def _hostname(pkt: DhcpPacket) -> str | None:
    raw = pkt.options.get(o.HOSTNAME)
    return raw.decode("ascii", "replace")[:63] if raw else None


def _http_url(http_file: str, host: str, port: int, files_path: str) -> str:
    if http_file.startswith(("http://", "https://")):
        return http_file.format(http_host=host, http_port=port)
    return f"http://{host}:{port}{files_path}{http_file.lstrip('/')}"

