"""A real Debian system with systemd and cloud-init configures itself from Fleetboot.

The system is built from Debian's packages (``fleetboot.lab.cloudimage``: debootstrap
into a cached directory, ``mkfs.ext4 -d`` into a disk image, no loop mounts) and has
nothing of Fleetboot installed. iPXE boots its kernel from Fleetboot; the node's
attributes ask for cloud-init, so the command line carries
``ds=nocloud-net;s=<fleetboot>/v1/self/nocloud/<token>/``. cloud-init creates the user
with its SSH key and sudo, sets the hostname, writes a file and runs the startup
command, and downloads a tarball and a package from Fleetboot's HTTP server, checked
by sha256. Tunnels and shaping, which cloud-init has no module for, are applied by the
node agent that user-data fetches and runs; the agent's systemd unit (installed as a
file, as an image would ship it) applies the sections its environment file names. A
check script (one of the files written) prints what the system sees on the serial
console and powers it off. The node reaches UP through cloud-init's last runcmd.

Slow: the first run builds the image (debootstrap downloads for minutes; cached in
/var/cache/fleetboot/debian-cloudinit afterwards), and systemd + cloud-init boot under
TCG take minutes.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import importlib.resources
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
    pytest.mark.timeout(3600),  # the first run builds the image (debootstrap: minutes)
    pytest.mark.skipif(None in (shutil.which("qemu-system-x86_64"), shutil.which("qemu-img"),
                                shutil.which("debootstrap"), shutil.which("dpkg-deb")),
                       reason="needs QEMU, qemu-img, debootstrap and dpkg-deb"),
]

VM_MAC = "52:54:00:77:06:01"
SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGcloudInitKeyFromFleetbootForCarol carol@lab"
CHECK = """#!/bin/sh
show() { echo "=== $1"; shift; "$@" 2>&1; echo "=== end"; }
{
show HOSTNAME hostname
show ID id carol
show KEYS cat /home/carol/.ssh/authorized_keys
show SUDO sudo -l -U carol
show FILE cat /etc/fleetboot-ci
show RUNCMD cat /var/tmp/runcmd.out
show HOSTS cat /etc/hosts
show GRE ip -d link show gre1
show GREADDR ip -4 addr show dev gre1
show QDISC tc qdisc show dev eth0
show TARBALL cat /opt/tb/hello.txt
show PACKAGE dpkg-query -W -f '${Status}\n' fleetboot-test
show UNIT systemctl is-active fleetboot-agent.service
show UNITLOG journalctl -b -u fleetboot-agent.service --no-pager -o cat
echo "FLEETBOOT-CHECK done"
} >/dev/ttyS0
"""
# The startup command (cloud-init's runcmd) records who ran it, then starts the check
# in the background so cloud-init finishes (and reports UP) first.
# It also starts the agent's unit (installed by the files section, as an image would
# ship it), which applies the sections agent.env names in this full system.
STARTUP = ("echo runcmd ran as $(id -un) > /var/tmp/runcmd.out; "
           "systemctl daemon-reload; systemctl start fleetboot-agent.service; "
           "setsid sh -c 'sleep 10; /usr/local/sbin/ci-check; systemctl poweroff' "
           ">/dev/null 2>&1 </dev/null &")


def _unit() -> str:
    return (importlib.resources.files("fleetboot.nodeconfig")
            .joinpath("client/fleetboot-agent.service").read_text())


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _block(console: str, name: str) -> str:
    found = re.search(rf"=== {name}\r?\n(.*?)=== end", console, re.S)
    assert found, f"no {name} block in the console:\n{console[-5000:]}"
    return found.group(1)


async def _boot(tmp: Path, disk: Path, port: int, seconds: float = 1200) -> str:
    overlay = tmp / "overlay.qcow2"  # the cached image stays as built
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(disk),
                    str(overlay)], check=True)
    serial = tmp / "serial.log"
    proc = await asyncio.create_subprocess_exec(
        "qemu-system-x86_64", "-machine", "pc,accel=tcg", "-m", "1024", "-nodefaults",
        "-no-user-config", "-display", "none", "-no-reboot", "-serial", f"file:{serial}",
        "-drive", f"file={overlay},format=qcow2,if=virtio",
        "-netdev", f"user,id=n0,bootfile=http://10.0.2.2:{port}/boot/script.ipxe",
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
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", serial.read_text(errors="replace"))


async def test_cloud_init_in_a_debian_system_configures_it_from_fleetboot(
        sqlite_db: Database, tmp_path: Path) -> None:
    from fleetboot.lab import cloudimage

    try:
        image = await asyncio.to_thread(cloudimage.build)
    except cloudimage.CloudImageError as exc:
        pytest.skip(f"no Debian cloud-init image: {exc}")
    root = tmp_path / "root"
    images = ImageStore(root)
    k, _ = images.add(image.vmlinuz, "vmlinuz")
    i, _ = images.add(image.initrd, "initrd.img")
    tar_body = make_tarball({"hello.txt": b"unpacked by cloud-init\n"})
    (tmp_path / "tb.tar.gz").write_bytes(tar_body)
    tb, _ = images.add(tmp_path / "tb.tar.gz", "tb.tar.gz")
    deb = build_deb(tmp_path)
    pkg, _ = images.add(deb, deb.name)
    with sqlite_db.session() as s:
        inventory.add_node(s, "vm", [inventory.NicSpec(VM_MAC, boot=True)])
        inventory.add_profile(s, "debian", kernel=k.path, initrd=i.path,
                              cmdline="root=/dev/vda rw console=ttyS0 net.ifnames=0")
        inventory.set_boot(s, "vm", "default", BootAction.PROFILE, "debian")
        sections = {
            "attributes": {"cloud_init": True},
            "hostname": "ci-node",
            "accounts": [{"name": "carol", "ssh_keys": [SSH_KEY], "sudo": True,
                          "shell": "/bin/bash"}],
            "hosts": [{"address": "10.0.2.2", "names": ["fleetboot.lab"]}],
            "files": [{"path": "/etc/fleetboot-ci", "content_b64": _b64("written by cloud-init\n")},
                      {"path": "/usr/local/sbin/ci-check", "content_b64": _b64(CHECK),
                       "mode": "0755"},
                      {"path": "/usr/local/sbin/fleetboot-client",
                       "content_b64": base64.b64encode(client_script()).decode(),
                       "mode": "0755"},
                      {"path": "/etc/systemd/system/fleetboot-agent.service",
                       "content_b64": _b64(_unit())},
                      {"path": "/etc/fleetboot/agent.env",
                       "content_b64": _b64("FLEETBOOT_SECTIONS=hosts,shaping\n")}],
            # No cloud-init module for these: user-data runs the agent for them
            "tunnels": [{"name": "gre1", "type": "gre", "remote": "10.0.2.2",
                         "local": "10.0.2.15", "key": "7", "address": "172.31.9.1/30"}],
            "shaping": [{"interface": "eth0", "delay_ms": 5}],
            "startup": {"command": STARTUP},
        }
        for name, value in sections.items():
            store.set_section(s, "vm", name, value)

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
    settings.http.public_url = nodeconfig.settings.base_url = f"http://10.0.2.2:{http.port}"
    files = f"http://10.0.2.2:{http.port}{FILES_PATH}"
    with sqlite_db.session() as s:  # downloads: checked by sha256 in cloud-init's runcmd
        store.set_section(s, "vm", "tarballs", [
            {"url": files + tb.path, "sha256": hashlib.sha256(tar_body).hexdigest(),
             "dest": "/opt/tb"}])
        store.set_section(s, "vm", "packages", [
            {"name": "fleetboot-test", "url": files + pkg.path,
             "sha256": hashlib.sha256(deb.read_bytes()).hexdigest()}])
    await nodeconfig.reload()
    try:
        console = await _boot(tmp_path, image.disk, http.port)
    finally:
        await http.stop()
        await nodeconfig.settle()
    try:
        assert "FLEETBOOT-CHECK done" in console, console[-6000:]
        assert _block(console, "HOSTNAME").strip() == "ci-node"
        assert re.search(r"uid=\d+\(carol\)", _block(console, "ID"))
        assert SSH_KEY in _block(console, "KEYS")
        assert "(ALL) NOPASSWD: ALL" in _block(console, "SUDO")
        assert "written by cloud-init" in _block(console, "FILE")
        assert "runcmd ran as root" in _block(console, "RUNCMD")
        hosts = _block(console, "HOSTS")
        assert "10.0.2.2 fleetboot.lab" in hosts  # by cloud-init
        assert "# BEGIN fleetboot" in hosts  # and the agent's block, from its unit
        gre = _block(console, "GRE")
        assert "gre remote 10.0.2.2 local 10.0.2.15" in gre and "key 0.0.0.7" in gre, gre
        assert "inet 172.31.9.1/30" in _block(console, "GREADDR")
        assert re.search(r"qdisc netem \S+ root .*delay 5ms", _block(console, "QDISC"))
        assert "unpacked by cloud-init" in _block(console, "TARBALL")
        assert "install ok installed" in _block(console, "PACKAGE")
        assert _block(console, "UNIT").strip() == "active"
        assert "FLEETBOOT-STATE UP" in _block(console, "UNITLOG")
        with sqlite_db.session() as s:
            node_id = inventory.get_node(s, "vm").id
            events = read_timeline(s, node_id)
        fetched = {e.detail.get("section") for e in events if e.kind == "config"}
        assert {"nocloud/meta-data", "nocloud/user-data"} <= fetched, fetched
        assert nodeconfig.statuses[node_id].state is State.UP
        results = {e.kind: e.detail.get("result") for e in events
                   if e.kind.startswith("config/")}
        # tarballs, packages, startup from cloud-init's runcmd; the rest from the agent
        assert results == {f"config/{name}": "ok" for name in (
            "tarballs", "packages", "startup", "tunnels", "shaping", "hosts")}, results
    finally:
        await nodeconfig.stop()
