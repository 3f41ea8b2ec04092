"""The DHCPv6 server state machine (RFC 8415). Pure: bytes, addresses and time in, replies out.

``Dhcp6Engine.handle(data, local, source, now)`` takes one datagram, the global
addresses of the interface it came in on (they select the subnet of a direct
client), the sender's address, and the time; it returns a :class:`Reply6`, or
None for a message to drop or ignore. Lease changes come back as records that
the adapter makes durable (lease journal) before the REPLY leaves.

Who the client is: its DUID (option 1) and, per IA_NA, the IAID; that pair is
the key of a lease. Which *node* it is: its MAC, learnt from option 79 (added
by a relay), from a DUID-LL/LLT, or from the EUI-64 interface id of its
link-local source address (what edk2 and iPXE use). With the MAC, the node's
inventory entry (its interfaces, one of them the boot NIC) is the same one the
DHCPv4 server reads, so a node is entered once and served in both families.

Boot answers (option 59, and 16 ``HTTPClient`` for UEFI HTTP boot) follow the
DHCPv4 rules: PXE firmware gets ``tftp://[server]/<tftp_file of its arch>``,
iPXE its per-node script URL (where the node's boot decision is made, as for
IPv4), HTTP-boot firmware ``http://[server]:port/boot/files/<http_file>``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from fleetboot.protocols.dhcp.engine import LeaseRecord
from fleetboot.protocols.dhcp.leases import BOUND, LeaseTable
from fleetboot.protocols.dhcp.settings import ArchBoot
from fleetboot.protocols.dhcp.view import HostInfo, SubnetInfo
from fleetboot.protocols.dhcp6 import codec as c
from fleetboot.protocols.dhcp6 import options as o
from fleetboot.protocols.dhcp6.codec import Dhcp6DecodeError, Dhcp6Message, IaNa, RelayMessage
from fleetboot.protocols.dhcp6.settings import Dhcp6Settings
from fleetboot.protocols.dhcp6.view import Dhcp6View, Reservation6Info, Subnet6Info
from fleetboot.server.events import BootEvent, EventSink

CACHE_LIMIT = 4096
LINK_LOCAL = 0xFE80 << 112
LINK_LOCAL_MASK = 0xFFC0 << 112
EUI64_MARK = 0xFFFE << 24

# Which messages must and must not carry a server identifier (RFC 8415 16).
NEEDS_SERVER_ID = frozenset((o.REQUEST, o.RENEW, o.DECLINE, o.RELEASE))
NO_SERVER_ID = frozenset((o.SOLICIT, o.CONFIRM, o.REBIND))
CLIENT_MESSAGES = frozenset((o.SOLICIT, o.REQUEST, o.CONFIRM, o.RENEW, o.REBIND, o.RELEASE,
                             o.DECLINE, o.INFORMATION_REQUEST))

DropHook = Callable[[str, str], None]


@dataclass(slots=True)
class Reply6:
    data: bytes | None
    dest: tuple[str, int]  # address text (link-local ones get the interface's scope) and port
    records: tuple[LeaseRecord, ...] = ()  # durable before ``data`` leaves
    msg_type: int = 0
    event: BootEvent | None = None


class Boot6(NamedTuple):
    options: tuple[tuple[int, bytes], ...]
    label: str  # "pxe", "ipxe", "http"
    url: str


@dataclass(slots=True)
class Client:
    """What the engine learnt about the sender of one message."""

    msg: Dhcp6Message
    duid: bytes
    mac: bytes | None
    subnet: Subnet6Info | None
    server: int  # our address for boot URLs (0: none known)
    relays: list[RelayMessage] = field(default_factory=list)  # outermost first
    host: HostInfo | None = None
    reservation: Reservation6Info | None = None
    hostname: str | None = None


def key_of(duid: bytes, iaid: int) -> bytes:
    """The lease table's client key: the DUID and the IAID (one lease per IA_NA)."""
    return duid + o.U32.pack(iaid)


def split_key(key: bytes) -> tuple[bytes, int]:
    return key[:-4], o.U32.unpack(key[-4:])[0]


def eui64_mac(addr: int) -> bytes | None:
    """The MAC in a link-local address with a modified EUI-64 interface id (RFC 4291 2.5.1)."""
    if addr & LINK_LOCAL_MASK != LINK_LOCAL or (addr >> 24) & 0xFFFF != 0xFFFE:
        return None
    iid = (addr & ((1 << 64) - 1)).to_bytes(8, "big")
    return bytes((iid[0] ^ 0x02,)) + iid[1:3] + iid[5:8]


class Dhcp6Engine:
    def __init__(self, settings: Dhcp6Settings, view: Dhcp6View, server_duid: bytes,
                 leases: LeaseTable | None = None, *, server_addresses: tuple[int, ...] = (),
                 events: EventSink | None = None, on_drop: DropHook | None = None) -> None:
        self.settings = settings
        self.server_duid = server_duid
        self.leases = leases if leases is not None else LeaseTable()
        self.events = events
        self.on_drop = on_drop
        self.counters: dict[str, int] = {}
        self._server_addresses = server_addresses
        self._fixed_server = o.ip6_int(settings.server_address) if settings.server_address \
            else 0
        self._boots: dict[tuple[object, ...], Boot6 | None] = {}
        self._blocks: dict[tuple[object, ...], bytes] = {}
        self._server_option = c.option(o.SERVERID, server_duid)
        self.view = view
        self.set_view(view)

    # --- inventory ---------------------------------------------------------------------------

    def set_view(self, view: Dhcp6View) -> None:
        # The v4 lease table is family-agnostic (integer addresses, byte keys): only the
        # ids and pools of these stand-in subnets matter to it.
        self.leases.configure(
            [SubnetInfo(s.id, s.name, 0, 0, 0, pools=s.pools) for s in view.subnets],
            set(view.reserved) | set(self._server_addresses))
        self._boots.clear()
        self._blocks.clear()
        self.view = view

    # --- bookkeeping -------------------------------------------------------------------------

    def _count(self, key: str) -> None:
        counters = self.counters
        counters[key] = counters.get(key, 0) + 1

    def _drop(self, reason: str, detail: str) -> None:
        self._count("drop." + reason)
        if self.on_drop is not None:
            self.on_drop(reason, detail)

    # --- entry point -------------------------------------------------------------------------

    def handle(self, data: bytes, local: tuple[int, ...], source: int,
               now: float) -> Reply6 | None:
        """One datagram from ``source`` on an interface holding ``local`` -> at most one reply."""
        self._count("rx")
        try:
            msg = c.decode(data)
            return self._dispatch(msg, local, source, now)
        except Dhcp6DecodeError as exc:
            self._drop("malformed", str(exc))
            return None

    def _dispatch(self, msg: Dhcp6Message | RelayMessage, local: tuple[int, ...], source: int,
                  now: float) -> Reply6 | None:
        relays: list[RelayMessage] = []
        while isinstance(msg, RelayMessage):
            if msg.msg_type != o.RELAY_FORW or msg.inner is None:
                self._drop("not_client_message", "RELAY-REPL sent to a server")
                return None
            relays.append(msg)
            msg = msg.inner
        if msg.msg_type not in CLIENT_MESSAGES:
            self._drop("not_client_message",
                       f"{o.MESSAGE_NAMES.get(msg.msg_type, msg.msg_type)} sent to a server")
            return None
        client = self._client(msg, relays, local, source)
        if client is None:
            return None
        if self.events is not None:
            self._emit_rx(client, now)
        mt = msg.msg_type
        if mt == o.SOLICIT:
            return self._solicit(client, now)
        if mt == o.REQUEST:
            return self._request(client, now)
        if mt in (o.RENEW, o.REBIND):
            return self._extend(client, now)
        if mt == o.RELEASE:
            return self._release(client)
        if mt == o.DECLINE:
            return self._decline(client, now)
        if mt == o.CONFIRM:
            return self._confirm(client, now)
        return self._information(client, now)

    # --- who is asking ------------------------------------------------------------------------

    def _client(self, msg: Dhcp6Message, relays: list[RelayMessage], local: tuple[int, ...],
                source: int) -> Client | None:
        mt = msg.msg_type
        duid = msg.get(o.CLIENTID)
        server = msg.get(o.SERVERID)
        if duid is None and mt != o.INFORMATION_REQUEST:
            self._drop("no_client_id", f"{o.MESSAGE_NAMES[mt]} without a client identifier")
            return None
        if duid is not None:
            c.check_duid(duid, "client")
        if mt in NO_SERVER_ID and server is not None:
            self._drop("unexpected_server_id", f"{o.MESSAGE_NAMES[mt]} names a server")
            return None
        if server is not None and server != self.server_duid:
            self._count("ignored.other_server")
            return None
        if mt in NEEDS_SERVER_ID and server is None:
            self._drop("no_server_id", f"{o.MESSAGE_NAMES[mt]} without a server identifier")
            return None
        mac, peer, link = None, source, 0
        if relays:
            inner = relays[-1]
            peer = int.from_bytes(inner.peer_address, "big")
            lla = inner.get(o.CLIENT_LINKLAYER_ADDR)
            mac = c.parse_link_layer(lla) if lla is not None else None
            for relay in reversed(relays):  # the relay nearest the client names the link
                link = int.from_bytes(relay.link_address, "big")
                if link and (link & LINK_LOCAL_MASK) != LINK_LOCAL:
                    break
                link = 0
        if mac is None and duid is not None:
            mac = c.duid_mac(duid)
        if mac is None:
            mac = eui64_mac(peer)
        subnet = self._subnet(link, local)
        ours = self._fixed_server or self._server_on(subnet, local)
        return Client(msg, duid or b"", mac, subnet, ours, relays)

    def _subnet(self, link: int, local: tuple[int, ...]) -> Subnet6Info | None:
        view = self.view
        if link:
            return view.subnet_for(link)
        for addr in local:
            subnet = view.subnet_for(addr)
            if subnet is not None:
                return subnet
        return None

    def _server_on(self, subnet: Subnet6Info | None, local: tuple[int, ...]) -> int:
        if subnet is not None:
            for addr in local:
                if subnet.contains(addr):
                    return addr
        if local:
            return local[0]
        return self._server_addresses[0] if self._server_addresses else 0

    def _admit(self, client: Client) -> tuple[bool, Boot6 | None]:
        """The DHCPv4 policy: unknown clients, boot only on a node's boot NIC."""
        view = self.view
        host = view.hosts.get(client.mac) if client.mac is not None else None
        res = view.reservation(client.duid, client.mac)
        client.host, client.reservation = host, res
        boot = self._boot(client)
        if host is None and res is None:
            if self.settings.unknown_clients == "ignore":
                self._count("ignored.unknown_client")
                return False, None
            return True, boot if self.settings.boot_unknown else None
        if host is not None and not host.is_boot:
            policy = self.settings.non_boot_interfaces
            if policy == "ignore" or (policy == "ignore_boot" and boot is not None):
                self._count("ignored.non_boot_interface")
                return False, None
            if boot is not None:
                self._count("boot.withheld_non_boot_interface")
            boot = None
        client.hostname = (res.hostname if res is not None and res.hostname else None) or (
            host.node if host is not None else None)
        return True, boot

    # --- boot answers ---------------------------------------------------------------------------

    def _boot(self, client: Client) -> Boot6 | None:
        msg = client.msg
        vendor_raw = msg.get(o.VENDOR_CLASS)
        user_raw = msg.get(o.USER_CLASS)
        if vendor_raw is None and user_raw is None:
            return None  # an OS client: the common case under load
        vendor = b"".join(c.parse_vendor_class(vendor_raw)[1]) if vendor_raw else b""
        ipxe = user_raw is not None and o.IPXE_USER_CLASS in c.parse_opaque_list(
            user_raw, 0, "user class")
        if not (ipxe or vendor.startswith(o.PXE_CLIENT) or vendor.startswith(o.HTTP_CLIENT)):
            return None
        arch_raw = msg.get(o.CLIENT_ARCH_TYPE)
        arches = c.parse_u16_list(arch_raw, "client architecture") if arch_raw else ()
        key = (vendor, ipxe, arches, client.server)
        if key in self._boots:
            return self._boots[key]
        boot = self._make_boot(vendor, ipxe, arches[0] if arches else _vendor_arch(vendor),
                               client.server)
        if len(self._boots) > CACHE_LIMIT:
            self._boots.clear()
        self._boots[key] = boot
        return boot

    def _make_boot(self, vendor: bytes, ipxe: bool, arch: int, server: int) -> Boot6 | None:
        boot = self._boot_url(vendor, ipxe, arch, server)
        params = self.settings.boot_file_params
        if boot is None or not params:
            return boot
        param_option = (o.BOOTFILE_PARAM, c.opaque_list(p.encode() for p in params))
        return boot._replace(options=(*boot.options, param_option))

    def _boot_url(self, vendor: bytes, ipxe: bool, arch: int, server: int) -> Boot6 | None:
        s = self.settings
        if not server:
            self._drop("no_server_address", "no IPv6 address of ours to put in a boot URL; "
                       "give the interface a global address or set dhcp6 server_address")
            return None
        host = f"[{o.ip6_text(server)}]"
        if ipxe and not vendor.startswith(o.HTTP_CLIENT):
            url = f"http://{host}:{s.http_port}{s.ipxe_script_path}"
            return Boot6(((o.BOOTFILE_URL, url.encode()),), "ipxe", url)
        entry: ArchBoot | None = s.architectures.get(arch)
        if vendor.startswith(o.HTTP_CLIENT):
            if entry is None or not entry.http_file:
                self._drop("unknown_arch", f"no http_file for HTTP-boot client arch {arch}")
                return None
            url = _http_url(entry.http_file, host, s.http_port, s.http_files_path)
            vendor_class = o.U32.pack(0) + c.opaque_list((o.HTTP_CLIENT,))
            return Boot6(((o.VENDOR_CLASS, vendor_class), (o.BOOTFILE_URL, url.encode())),
                         "http", url)
        if entry is None or not entry.tftp_file:
            self._drop("unknown_arch", f"no tftp_file for PXE client arch {arch}")
            return None
        name = entry.tftp_file.format(http_host=host, http_port=s.http_port).lstrip("/")
        url = f"tftp://{host}/{name}"
        return Boot6(((o.BOOTFILE_URL, url.encode()),), "pxe", url)

    # --- addresses ------------------------------------------------------------------------------

    def _reserved_usable(self, client: Client, addr: int, key: bytes, now: float) -> bool:
        """A reserved address is free, this IA's, or held by the same NIC under another
        DUID or IAID (edk2 runs two DHCPv6 clients on one NIC; firmware, then the OS)."""
        if self.leases.usable(addr, key, now):
            return True
        holder = self.leases.by_addr.get(addr)
        return (holder is not None and client.mac is not None
                and holder.client_id == client.mac)

    def _allowed(self, client: Client, subnet: Subnet6Info, addr: int, key: bytes,
                 now: float) -> bool:
        res = client.reservation
        if res is not None and res.subnet_id == subnet.id and addr == res.address:
            return self._reserved_usable(client, addr, key, now)
        leases = self.leases
        return (subnet.in_pool(addr) and addr not in self.view.reserved
                and not leases.excluded(addr) and leases.usable(addr, key, now))

    def _choose(self, client: Client, subnet: Subnet6Info, ia: IaNa, key: bytes, first: bool,
                now: float) -> int | None:
        res = client.reservation
        if first and res is not None and res.subnet_id == subnet.id:
            if self._reserved_usable(client, res.address, key, now):
                return res.address
            self._drop("reservation_in_use", f"reserved {o.ip6_text(res.address)} is leased "
                       "to another client; using the pool")
        lease = self.leases.get(key)
        if lease is not None and subnet.contains(lease.addr) and self._allowed(
                client, subnet, lease.addr, key, now):
            return lease.addr
        for hint in ia.addresses:
            if subnet.contains(hint.addr) and self._allowed(client, subnet, hint.addr, key, now):
                return hint.addr
        return self.leases.allocate(subnet.id, key, now)

    def _ias(self, client: Client) -> list[IaNa]:
        return [c.parse_ia_na(value) for code, value in client.msg.options if code == o.IA_NA]

    # --- message handlers -------------------------------------------------------------------------

    def _solicit(self, client: Client, now: float) -> Reply6 | None:
        subnet = client.subnet
        if subnet is None:
            self._drop("no_subnet", "SOLICIT on a link with no IPv6 subnet: give the served "
                       "interface an address inside a `fleetboot subnet6` prefix")
            return None
        ok, boot = self._admit(client)
        if not ok:
            return None
        rapid = self.settings.rapid_commit and client.msg.has(o.RAPID_COMMIT)
        ias: list[bytes] = []
        records: list[LeaseRecord] = []
        for index, ia in enumerate(self._ias(client)):
            key = key_of(client.duid, ia.iaid)
            addr = self._choose(client, subnet, ia, key, index == 0, now)
            if addr is None:
                self._drop("pool_exhausted", f"subnet {subnet.describe()}: pool exhausted")
                ias.append(self._ia_status(ia.iaid, o.NO_ADDRS_AVAIL, "no addresses available"))
                continue
            if rapid:
                records.append(self._bind(client, subnet, addr, key, now))
            else:
                self.leases.offer(key, addr, subnet.id, now, self.settings.offer_hold_s)
            ias.append(self._ia(ia.iaid, addr, subnet))
        mt = o.REPLY if rapid else o.ADVERTISE
        return self._reply(mt, client, ias, boot, now, tuple(records), rapid=rapid)

    def _request(self, client: Client, now: float) -> Reply6 | None:
        subnet = client.subnet
        if subnet is None:
            self._count("ignored.no_subnet")
            return None
        ok, boot = self._admit(client)
        if not ok:
            return None
        ias: list[bytes] = []
        records: list[LeaseRecord] = []
        for index, ia in enumerate(self._ias(client)):
            key = key_of(client.duid, ia.iaid)
            addr = self._choose(client, subnet, ia, key, index == 0, now)
            if addr is None:
                self._drop("pool_exhausted", f"subnet {subnet.describe()}: pool exhausted")
                ias.append(self._ia_status(ia.iaid, o.NO_ADDRS_AVAIL, "no addresses available"))
                continue
            records.append(self._bind(client, subnet, addr, key, now))
            ias.append(self._ia(ia.iaid, addr, subnet))
        return self._reply(o.REPLY, client, ias, boot, now, tuple(records))

    def _extend(self, client: Client, now: float) -> Reply6 | None:
        """RENEW and REBIND (RFC 8415 18.3.4, 18.3.5): extend what is still ours to give."""
        subnet = client.subnet
        rebind = client.msg.msg_type == o.REBIND
        if subnet is None:
            self._count("ignored.no_subnet")
            return None
        ok, boot = self._admit(client)
        if not ok:
            return None
        ias: list[bytes] = []
        records: list[LeaseRecord] = []
        for ia in self._ias(client):
            key = key_of(client.duid, ia.iaid)
            lease = self.leases.get(key)
            parts: list[tuple[int, bytes]] = []
            bound = False
            for hint in ia.addresses:
                if subnet.contains(hint.addr) and self._allowed(client, subnet, hint.addr, key,
                                                                now):
                    records.append(self._bind(client, subnet, hint.addr, key, now))
                    parts.append((o.IAADDR, self._iaaddr(hint.addr, subnet)))
                    bound = True
                else:  # not ours to give (any more): lifetimes 0 tell the client to stop
                    parts.append((o.IAADDR, c.iaaddr(hint.addr, 0, 0)))
            if not bound:
                if lease is None and not rebind:
                    ias.append(self._ia_status(ia.iaid, o.NO_BINDING, "no binding"))
                    continue
                if not parts:  # an IA with no address: give it one, as a REQUEST would
                    addr = self._choose(client, subnet, ia, key, False, now)
                    if addr is not None:
                        records.append(self._bind(client, subnet, addr, key, now))
                        parts.append((o.IAADDR, self._iaaddr(addr, subnet)))
            t1, t2 = _times(subnet)
            ias.append(c.ia_na(ia.iaid, t1, t2, parts))
        return self._reply(o.REPLY, client, ias, boot, now, tuple(records))

    def _release(self, client: Client) -> Reply6 | None:
        records: list[LeaseRecord] = []
        ias: list[bytes] = []
        for ia in self._ias(client):
            key = key_of(client.duid, ia.iaid)
            released = False
            for hint in ia.addresses:
                lease = self.leases.by_addr.get(hint.addr)
                mac = lease.client_id if lease is not None else None
                if self.leases.release(key, hint.addr):
                    records.append(LeaseRecord("free", hint.addr, key, client_id=mac))
                    released = True
            if not released:
                ias.append(self._ia_status(ia.iaid, o.NO_BINDING, "no binding"))
        self._count("released" if records else "ignored.release_unknown")
        return self._plain_reply(client, ias, o.SUCCESS, "released", tuple(records))

    def _decline(self, client: Client, now: float) -> Reply6 | None:
        records: list[LeaseRecord] = []
        for ia in self._ias(client):
            key = key_of(client.duid, ia.iaid)
            for hint in ia.addresses:
                if self.leases.decline(key, hint.addr, now, self.settings.decline_hold_s):
                    records.append(LeaseRecord("free", hint.addr, key))
                    self._drop("declined", f"a client declined {o.ip6_text(hint.addr)}: it is "
                               "in use by another host; parked")
        return self._plain_reply(client, [], o.SUCCESS, "declined", tuple(records))

    def _confirm(self, client: Client, now: float) -> Reply6 | None:
        addrs = [a.addr for ia in self._ias(client) for a in ia.addresses]
        if not addrs or client.subnet is None:
            self._count("ignored.confirm")  # RFC 8415 18.3.3: nothing to say -> no reply
            return None
        if all(client.subnet.contains(a) for a in addrs):
            return self._plain_reply(client, [], o.SUCCESS, "all addresses on link")
        return self._plain_reply(client, [], o.NOT_ON_LINK, "not on link")

    def _information(self, client: Client, now: float) -> Reply6 | None:
        if client.subnet is None and not client.relays:
            self._count("ignored.no_subnet")
            return None
        ok, boot = self._admit(client)
        if not ok:
            return None
        return self._reply(o.REPLY, client, [], boot, now, ())

    # --- building replies --------------------------------------------------------------------

    def _bind(self, client: Client, subnet: Subnet6Info, addr: int, key: bytes,
              now: float) -> LeaseRecord:
        lease = self.leases.bind(key, addr, subnet.id, now, subnet.valid_seconds,
                                 client.mac, client.hostname)
        return LeaseRecord("bind", addr, key, lease.expires, lease.starts, subnet.id,
                           client.mac, lease.hostname)

    def _iaaddr(self, addr: int, subnet: Subnet6Info) -> bytes:
        return c.iaaddr(addr, subnet.preferred_seconds, subnet.valid_seconds)

    def _ia(self, iaid: int, addr: int, subnet: Subnet6Info) -> bytes:
        t1, t2 = _times(subnet)
        return c.ia_na(iaid, t1, t2, ((o.IAADDR, self._iaaddr(addr, subnet)),))

    def _ia_status(self, iaid: int, code: int, text: str) -> bytes:
        return c.ia_na(iaid, 0, 0, ((o.STATUS_CODE, c.status(code, text)),))

    def _block(self, mt: int, client: Client, boot: Boot6 | None) -> bytes:
        """The options after the IAs: cached per (type, subnet, ORO, boot answer)."""
        oro_raw = client.msg.get(o.ORO) or b""
        key = (mt, client.subnet.id if client.subnet else None, oro_raw, boot)
        block = self._blocks.get(key)
        if block is None:
            oro = c.parse_u16_list(oro_raw, "option request")
            items: list[tuple[int, bytes]] = []
            subnet = client.subnet
            if mt == o.ADVERTISE and self.settings.preference:
                items.append((o.PREFERENCE, bytes((self.settings.preference,))))
            if subnet is not None and subnet.dns and o.DNS_SERVERS in oro:
                items.append((o.DNS_SERVERS, b"".join(o.ip6_bytes(a) for a in subnet.dns)))
            if subnet is not None and subnet.domains and o.DOMAIN_LIST in oro:
                items.append((o.DOMAIN_LIST, b"".join(_dns_name(d) for d in subnet.domains)))
            if boot is not None:
                items.extend(boot.options)
            block = c.encode_options(items)
            if len(self._blocks) > CACHE_LIMIT:
                self._blocks.clear()
            self._blocks[key] = block
        return block

    def _reply(self, mt: int, client: Client, ias: list[bytes], boot: Boot6 | None, now: float,
               records: tuple[LeaseRecord, ...], rapid: bool = False) -> Reply6:
        msg = client.msg
        parts = [o.HEADER.pack((mt << 24) | msg.xid), self._server_option]
        if client.duid:
            parts.append(c.option(o.CLIENTID, client.duid))
        parts.extend(c.option(o.IA_NA, ia) for ia in ias)
        if rapid:
            parts.append(c.option(o.RAPID_COMMIT, b""))
        parts.append(self._block(mt, client, boot))
        self._count("tx")
        address = records[-1].addr if records else 0
        return self._wrap(client, b"".join(parts), mt, records,
                          self._tx_event(mt, client, address, boot, now))

    def _plain_reply(self, client: Client, ias: list[bytes], code: int, text: str,
                     records: tuple[LeaseRecord, ...] = ()) -> Reply6:
        msg = client.msg
        parts = [o.HEADER.pack((o.REPLY << 24) | msg.xid), self._server_option]
        if client.duid:
            parts.append(c.option(o.CLIENTID, client.duid))
        parts.extend(c.option(o.IA_NA, ia) for ia in ias)
        parts.append(c.option(o.STATUS_CODE, c.status(code, text)))
        self._count("tx")
        return self._wrap(client, b"".join(parts), o.REPLY, records, None)

    def _wrap(self, client: Client, data: bytes, mt: int, records: tuple[LeaseRecord, ...],
              event: BootEvent | None) -> Reply6:
        """Direct: to the client's port 546. Relayed: RELAY-REPL layers back to the relay."""
        if not client.relays:
            return Reply6(data, ("", self.settings.client_port), records, mt, event)
        for relay in reversed(client.relays):
            head = bytes((o.RELAY_REPL, relay.hop_count)) + relay.link_address \
                + relay.peer_address
            iface = relay.get(o.INTERFACE_ID)
            opts = c.option(o.INTERFACE_ID, iface) if iface is not None else b""
            data = head + opts + c.option(o.RELAY_MSG, data)
        return Reply6(data, ("", self.settings.port), records, mt, event)

    # --- events ----------------------------------------------------------------------------------

    def _emit_rx(self, client: Client, now: float) -> None:
        assert self.events is not None
        msg = client.msg
        vendor_raw = msg.get(o.VENDOR_CLASS)
        user_raw = msg.get(o.USER_CLASS)
        try:
            vendor = b"".join(c.parse_vendor_class(vendor_raw)[1]) if vendor_raw else b""
            users = c.parse_opaque_list(user_raw, 0, "user class") if user_raw else []
        except Dhcp6DecodeError:
            vendor, users = b"", []
        detail = {"dir": "rx", "family": 6, "xid": msg.xid, "duid": client.duid.hex(),
                  "vendor_class": vendor.decode("latin-1"),
                  "ipxe": o.IPXE_USER_CLASS in users, "relayed": bool(client.relays)}
        self.events(BootEvent(now, "dhcp", o.MESSAGE_NAMES[msg.msg_type],
                              o.mac_text(client.mac) if client.mac else None, None, detail))

    def _tx_event(self, mt: int, client: Client, addr: int, boot: Boot6 | None,
                  now: float) -> BootEvent | None:
        if self.events is None:
            return None
        detail: dict[str, object] = {"dir": "tx", "family": 6, "xid": client.msg.xid}
        if boot is not None:
            detail["boot"] = boot.label
            detail["file"] = boot.url
        return BootEvent(now, "dhcp", o.MESSAGE_NAMES[mt],
                         o.mac_text(client.mac) if client.mac else None,
                         o.ip6_text(addr) if addr else None, detail)

    # --- lookups ---------------------------------------------------------------------------

    def mac_for_address(self, addr: int, now: float) -> bytes | None:
        lease = self.leases.by_addr.get(addr)
        if lease is None or lease.state != BOUND or lease.expires <= now:
            return None
        return lease.client_id


def _times(subnet: Subnet6Info) -> tuple[int, int]:
    return subnet.preferred_seconds // 2, subnet.preferred_seconds * 4 // 5


def _vendor_arch(vendor: bytes) -> int:
    """``PXEClient:Arch:00007:...`` in the vendor class when option 61 is missing."""
    if b":Arch:" in vendor:
        digits = vendor.split(b":Arch:", 1)[1][:5]
        if digits.isdigit():
            return int(digits)
    return 0


def _http_url(http_file: str, host: str, port: int, files_path: str) -> str:
    if http_file.startswith(("http://", "https://")):
        return http_file.format(http_host=host, http_port=port)
    return f"http://{host}:{port}{files_path}{http_file.lstrip('/')}"


def _dns_name(name: str) -> bytes:
    """RFC 1035 wire form, uncompressed (option 24 forbids compression)."""
    out = b"".join(bytes((len(label),)) + label.encode("ascii", "replace")[:63]
                   for label in name.strip(".").split(".") if label)
    return out + b"\0"
