"""The node agent applies every section inside a real guest, checked from the guest itself.

A busybox initramfs (the lab's guest, plus iproute2's ``ip``/``tc`` and ``wg`` from this
machine, and the kernel modules for tunnels and qdiscs) is booted by iPXE from Fleetboot
under QEMU (TCG). Its init runs a check script baked into the image: the agent's ``boot``
(fetch once, apply each section, report each result, report UP), then what the guest
sees (``ip addr``, ``ip route``, ``/etc/hosts``, ``id``, the key file, ``tc qdisc show``,
``ip -d link``, the startup command's log, the unpacked tarball and package), then a
second ``apply`` to show the sections are idempotent. Failures on purpose (a tarball with
a wrong checksum, an NFS server that accepts and never answers) show on the timeline and
the node still reaches UP within the mount's bound, because neither section is required.

Like test_client_vm.py, QEMU's user network stands in for DHCP; the guest reaches the
server on the host's loopback as 10.0.2.2.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from nodeconfig_helpers import build_deb, make_tarball

from fleetboot.boot.images import ImageStore
from fleetboot.boot.ipxe import FILES_PATH
from fleetboot.config import HttpConfig, Settings
from fleetboot.inventory import service as inventory
from fleetboot.inventory.db import Database
from fleetboot.inventory.models import BootAction
from fleetboot.nodeconfig import store
from fleetboot.nodeconfig.api import client_script
from fleetboot.nodeconfig.service import NodeConfigService, NodeConfigSettings
from fleetboot.nodeconfig.states import State
from fleetboot.nodeconfig.timeline import read_timeline
from fleetboot.server.directory import StaticDirectory
from fleetboot.server.http import HttpService, create_app

pytestmark = [
    pytest.mark.qemu, pytest.mark.slow,
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs QEMU"),
    pytest.mark.skipif(None in (shutil.which("tc"), shutil.which("wg"), shutil.which("dpkg-deb")),
                       reason="needs iproute2, wireguard-tools and dpkg-deb on this machine"),
]

VM_MAC = "52:54:00:77:05:01"
SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKq1agentTestKeyForFleetbootsNodeAgent alice@lab"
HASH = "$6$salt$0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ./0123456789abcdef"
# Tunnels and qdiscs are modules in Debian's cloud kernel (sch_netem included).
AGENT_MODULES = ("af_packet", "virtio_pci", "virtio_net", "ip_gre", "ipip", "vxlan",
                 "sch_tbf", "sch_netem")
OPTIONAL_MODULES = ("wireguard", "nfsv3")

# Run by the guest's init after its DHCP lease: the agent, then what the guest sees.
# iproute2 by its path: busybox's sh would run its own ip and tc applets.
CHECK_SCRIPT = r"""#!/bin/sh
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
ip() { /sbin/ip "$@"; }
tc() { /sbin/tc "$@"; }
sh /usr/sbin/fleetboot-client boot
echo "FLEETBOOT-CHECK boot rc=$?"
show() { echo "=== $1"; shift; "$@" 2>&1; echo "=== end"; }
show ADDR ip addr show dev eth0
show ROUTE ip route show
show HOSTS cat /etc/hosts
show ID id alice
show KEYS cat /home/alice/.ssh/authorized_keys
show SUDO cat /etc/sudoers.d/90-fleetboot-alice
show SHADOW grep ^alice: /etc/shadow
show QDISC tc qdisc show
show GRE ip -d link show gre1
show GRETAP ip -d link show gt1
show VXLAN ip -d link show vx1
show IPIP ip -d link show ipip1
show WG wg show wg1
show TUNADDR ip -4 addr show
show STARTUP cat /var/log/fleetboot/startup.log
show TARBALL cat /opt/tb/hello.txt
show PACKAGE cat /usr/share/fleetboot-test/package.txt
show MOUNTS grep -e /mnt/ /proc/mounts
show FILE cat /etc/fleetboot-test
before=$(cat /etc/passwd /etc/group /etc/shadow /etc/hosts | md5sum)
sh /usr/sbin/fleetboot-client apply hosts accounts routes interfaces tunnels shaping tarballs
echo "FLEETBOOT-CHECK again rc=$?"
after=$(cat /etc/passwd /etc/group /etc/shadow /etc/hosts | md5sum)
same=0
[ "$before" = "$after" ] && same=1
echo "FLEETBOOT-CHECK idempotent same=$same"
show QDISC2 tc qdisc show dev eth0
"""


def _block(console: str, name: str) -> str:
    found = re.search(rf"=== {name}\r?\n(.*?)=== end", console, re.S)
    assert found, f"no {name} block in the console:\n{console[-4000:]}"
    return found.group(1)


async def _boot(tmp: Path, port: int, seconds: float = 420) -> str:
    serial = tmp / "serial.log"
    url = f"http://10.0.2.2:{port}/boot/script.ipxe"
    proc = await asyncio.create_subprocess_exec(
        "qemu-system-x86_64", "-machine", "pc,accel=tcg", "-m", "384", "-nodefaults",
        "-no-user-config", "-display", "none", "-no-reboot", "-serial", f"file:{serial}",
        "-netdev", f"user,id=n0,bootfile={url}",
        "-device", f"virtio-net-pci,netdev=n0,mac={VM_MAC},bootindex=1",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        await asyncio.wait_for(proc.wait(), seconds)
    except TimeoutError:
        pass
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", serial.read_text(errors="replace"))


async def _never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while await reader.read(4096):
        pass
    writer.close()


def _wg_keys() -> tuple[str, str]:
    private = subprocess.run(["wg", "genkey"], capture_output=True, text=True,
                             check=True).stdout.strip()
    public = subprocess.run(["wg", "pubkey"], input=private, capture_output=True, text=True,
                            check=True).stdout.strip()
    return private, public


def _sections(base: str, good: tuple[str, str], bad_url: str, deb: tuple[str, str],
              wireguard: bool, nfs_port: int) -> dict[str, object]:
    private, _ = _wg_keys()
    _, peer = _wg_keys()
    wg = [{"name": "wg1", "type": "wireguard", "remote": "10.0.2.2", "key": private,
           "peer_public_key": peer, "port": 51999, "address": "172.31.3.1/24"}]
    return {
        "hostname": "agent-vm",
        "interfaces": [{"mac": VM_MAC, "addresses": ["192.168.77.5/24"], "mtu": 1400}],
        "routes": [{"destination": "10.99.0.0/16", "gateway": "192.168.77.1"}],
        "hosts": [{"address": "192.168.77.9", "names": ["peer.lab", "peer"]}],
        "accounts": [{"name": "alice", "uid": 2001, "gid": 2001, "groups": ["wheel"],
                      "ssh_keys": [SSH_KEY], "shell": "/bin/sh", "sudo": True,
                      "password_hash": HASH}],
        "files": [{"path": "/etc/fleetboot-test",
                   "content_b64": base64.b64encode(b"a file\n").decode()}],
        "mounts": [{"source": "scratch", "target": "/mnt/scratch", "type": "tmpfs",
                    "options": "size=1m"},
                   {"source": "10.0.2.2:/export", "target": "/mnt/nfs", "type": "nfs",
                    "options": f"nolock,vers=3,proto=tcp,mountproto=tcp,port={nfs_port},"
                               f"mountport={nfs_port},addr=10.0.2.2"}],
        "tunnels": [
            {"name": "gre1", "type": "gre", "remote": "10.0.2.2", "local": "10.0.2.15",
             "key": "42", "address": "172.31.1.1/30"},
            {"name": "gt1", "type": "gretap", "remote": "10.0.2.3", "local": "10.0.2.15"},
            {"name": "vx1", "type": "vxlan", "remote": "10.0.2.2", "key": "4242",
             "address": "172.31.2.1/24"},
            {"name": "ipip1", "type": "ipip", "remote": "10.0.2.4", "local": "10.0.2.15"},
            *(wg if wireguard else []),
        ],
        "shaping": [{"interface": "eth0", "delay_ms": 20, "loss_pct": 0},
                    {"interface": "gt1", "rate_kbit": 1000}],
        "tarballs": [{"url": f"{base}{good[0]}", "sha256": good[1], "dest": "/opt/tb"},
                     {"url": f"{base}{bad_url}", "sha256": "0" * 64, "dest": "/opt/bad"}],
        "packages": [{"name": "fleetboot-test", "url": f"{base}{deb[0]}", "sha256": deb[1]}],
        "startup": {"command": "echo started as $(id -un) in $(pwd); echo uid=$(id -u)",
                    "user": "alice", "timeout_s": 20},
        "required": ["interfaces", "accounts", "tunnels", "shaping", "startup"],
    }


async def test_the_agent_applies_every_section_in_a_busybox_guest(
        sqlite_db: Database, tmp_path: Path) -> None:
    from fleetboot.lab import guest

    try:
        kernel = await asyncio.to_thread(guest.fetch_guest_kernel, "cloud",
                                         modules=AGENT_MODULES)
    except guest.GuestError as exc:
        pytest.skip(f"no guest kernel: {exc}")
    modules: tuple[str, ...] = AGENT_MODULES
    try:  # wireguard and NFS come with a second download of the kernel package
        more = await asyncio.to_thread(guest.fetch_guest_kernel, "cloud",
                                       modules=(*AGENT_MODULES, *OPTIONAL_MODULES))
        more.load_order((*AGENT_MODULES, *OPTIONAL_MODULES))
        kernel, modules = more, (*AGENT_MODULES, *OPTIONAL_MODULES)
    except guest.GuestError:
        pass  # no network for the download: the rest is still checked
    wireguard = "wireguard" in modules
    extra = [*guest.host_programs(["ip", "tc", "wg"]),
             guest.ExtraFile("/usr/sbin/fleetboot-client", client_script()),
             guest.ExtraFile("/usr/sbin/agent-check", CHECK_SCRIPT.encode())]
    initrd = await asyncio.to_thread(guest.build_initramfs, kernel, extra_files=extra,
                                     hook="/usr/sbin/agent-check", modules=modules)
    root = tmp_path / "root"
    root.mkdir()
    images = ImageStore(root)
    k, _ = images.add(kernel.vmlinuz, "vmlinuz")
    i, _ = images.add(initrd, "initrd.img")
    tar_body = make_tarball({"hello.txt": b"unpacked from a tarball\n"})
    (tmp_path / "tb.tar.gz").write_bytes(tar_body)
    tb, _ = images.add(tmp_path / "tb.tar.gz", "tb.tar.gz")
    deb = build_deb(tmp_path)
    pkg, _ = images.add(deb, deb.name)
    with sqlite_db.session() as s:
        inventory.add_node(s, "vm", [inventory.NicSpec(VM_MAC, boot=True)])
        inventory.add_profile(s, "lab", kernel=k.path, initrd=i.path, cmdline=guest.kernel_cmdline(
            mac=VM_MAC, end="poweroff", extra={"mount_tries": "2", "mount_timeout": "3"}))
        inventory.set_boot(s, "vm", "default", BootAction.PROFILE, "lab")

    settings = Settings(server_address="10.0.2.2", boot_root=str(root),
                        http=HttpConfig(wait_seconds=1))
    directory = StaticDirectory({"127.0.0.1": VM_MAC})
    nodeconfig = NodeConfigService(sqlite_db, directory, NodeConfigSettings(
        add_client_hook=False))
    await nodeconfig.start()
    app = create_app(settings, sqlite_db, directory, nodeconfig.sink,
                     extra_routes=nodeconfig.routes(), cmdline_hook=nodeconfig.cmdline_hook)
    http = HttpService(app, "127.0.0.1", 0, protocol=nodeconfig.http_protocol())
    await http.start()
    # An NFS server that accepts and never answers (on loopback, the guest's 10.0.2.2)
    silent = await asyncio.start_server(_never_answer, "127.0.0.1", 0)
    base = f"http://10.0.2.2:{http.port}"
    settings.http.public_url = nodeconfig.settings.base_url = base
    files = base + FILES_PATH
    with sqlite_db.session() as s:
        for name, value in _sections(
                files, (tb.path, hashlib.sha256(tar_body).hexdigest()), tb.path,
                (pkg.path, hashlib.sha256(deb.read_bytes()).hexdigest()), wireguard,
                silent.sockets[0].getsockname()[1]).items():
            store.set_section(s, "vm", name, value)
    await nodeconfig.reload()
    try:
        console = await _boot(tmp_path, http.port)
    finally:
        silent.close()
        await http.stop()
        await nodeconfig.settle()
    try:
        _check_console(console, wireguard)
        _check_timeline(sqlite_db, nodeconfig, nfs="nfsv3" in modules)
    finally:
        await nodeconfig.stop()


def _check_console(console: str, wireguard: bool) -> None:
    tail = console[-6000:]
    assert "FLEETBOOT-STATE UP" in console, tail
    assert "FLEETBOOT-CHECK boot rc=0" in console, tail
    addr = _block(console, "ADDR")
    assert "inet 192.168.77.5/24" in addr and "mtu 1400" in addr, addr
    assert "10.99.0.0/16 via 192.168.77.1 dev eth0" in _block(console, "ROUTE")
    hosts = _block(console, "HOSTS")
    assert "192.168.77.9 peer.lab peer" in hosts and "# BEGIN fleetboot" in hosts, hosts
    ident = _block(console, "ID")
    assert "uid=2001(alice) gid=2001(alice)" in ident and "wheel" in ident, ident
    assert SSH_KEY in _block(console, "KEYS")
    assert "alice ALL=(ALL) NOPASSWD:ALL" in _block(console, "SUDO")
    assert f"alice:{HASH}:" in _block(console, "SHADOW")
    qdisc = _block(console, "QDISC")
    assert re.search(r"qdisc netem \S+ dev eth0 root .*delay 20ms", qdisc), qdisc
    assert re.search(r"qdisc tbf \S+ dev gt1 root .*rate 1Mbit", qdisc), qdisc
    gre = _block(console, "GRE")
    assert "gre remote 10.0.2.2 local 10.0.2.15" in gre and "key 0.0.0.42" in gre, gre
    assert "gretap remote 10.0.2.3" in _block(console, "GRETAP")
    vxlan = _block(console, "VXLAN")
    assert "vxlan id 4242 remote 10.0.2.2" in vxlan and "dstport 4789" in vxlan, vxlan
    assert "ipip" in _block(console, "IPIP") and "remote 10.0.2.4" in _block(console, "IPIP")
    tunaddr = _block(console, "TUNADDR")
    assert "inet 172.31.1.1/30" in tunaddr and "inet 172.31.2.1/24" in tunaddr, tunaddr
    if wireguard:
        wg = _block(console, "WG")
        assert "listening port: 51999" in wg and "endpoint: 10.0.2.2:51999" in wg, wg
        assert "inet 172.31.3.1/24" in tunaddr
    startup = _block(console, "STARTUP")
    assert "started as alice" in startup and "uid=2001" in startup, startup
    assert "unpacked from a tarball" in _block(console, "TARBALL")
    assert "installed by the agent" in _block(console, "PACKAGE")
    mounts = _block(console, "MOUNTS")
    assert "/mnt/scratch tmpfs" in mounts and "/mnt/nfs" not in mounts, mounts
    assert "a file" in _block(console, "FILE")
    # the second apply: the tarball is skipped (applied once), the bad one fails again
    assert "FLEETBOOT-CHECK again rc=1" in console
    assert "FLEETBOOT-CHECK idempotent same=1" in console
    assert "delay 20ms" in _block(console, "QDISC2")


def _check_timeline(db: Database, nodeconfig: NodeConfigService, nfs: bool) -> None:
    with db.session() as s:
        node_id = inventory.get_node(s, "vm").id
        events = read_timeline(s, node_id)
    assert nodeconfig.statuses[node_id].state is State.UP
    results = {e.kind.removeprefix("config/"): e.detail for e in events
               if e.kind.startswith("config/")}
    for ok in ("hostname", "interfaces", "routes", "hosts", "accounts", "files", "tunnels",
               "shaping", "packages", "startup"):
        assert results[ok] == {"result": "ok"}, (ok, results)
    assert results["tarballs"]["result"] == "failed"
    assert "checksum mismatch" in results["tarballs"]["reason"]
    assert results["mounts"]["result"] == "failed"
    assert "failed after 2 tries" in results["mounts"]["reason"]
    assert "10.0.2.2:/export" in results["mounts"]["reason"]
    if nfs:  # the kernel tried the server, which never answers: each try cut at 3 s
        assert "no answer within 3s" in results["mounts"]["reason"], results["mounts"]
