"""cloud-init's NoCloud-net files rendered from a node's document, and served behind the
same identity and per-boot token rules as the configuration document."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nodeconfig_helpers import make_fleet, node_ref, serve

from fleetboot.inventory.db import Database
from fleetboot.nodeconfig import cloudinit, store
from fleetboot.nodeconfig.render import FleetFacts, NicFacts, NodeFacts, build_document
from fleetboot.nodeconfig.sections import validate_section
from fleetboot.nodeconfig.service import NodeConfigSettings
from fleetboot.nodeconfig.states import State
from fleetboot.nodeconfig.timeline import read_timeline

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOx4 ops@fleet"


def _doc(**sections: Any) -> dict[str, Any]:
    valid = {name: validate_section(name, value) for name, value in sections.items()}
    node = NodeFacts(7, "n7", (NicFacts("52:54:00:00:00:07", "eth0", True, "10.0.0.7", 24,
                                        "10.0.0.1"),), sections=valid)
    # through JSON, as the route reads it back from the rendered bytes
    return json.loads(json.dumps(build_document(node, FleetFacts())))


def test_meta_data_names_the_instance_and_the_host() -> None:
    meta = yaml.safe_load(cloudinit.meta_data(_doc(hostname="web-1", domain="lab.test")))
    assert meta == {"instance-id": "fleetboot-n7", "local-hostname": "web-1.lab.test"}


def test_user_data_maps_the_sections_to_cloud_config() -> None:
    doc = _doc(
        hostname="web-1",
        accounts=[{"name": "ops", "uid": 2000, "groups": ["adm", "wheel"], "ssh_keys": [KEY],
                   "sudo": True, "password_hash": "$6$s$h", "shell": "/bin/bash"}],
        hosts=[{"address": "10.0.0.9", "names": ["db.lab", "db"]}],
        files=[{"path": "/etc/motd", "content_b64": "aGkK", "mode": "0600"},
               {"path": "/opt/big.bin", "url": "http://10.0.0.1/big.bin", "sha256": "a" * 64}],
        tarballs=[{"url": "http://10.0.0.1/t.tgz", "sha256": "b" * 64, "dest": "/opt"}],
        packages=[{"name": "tool", "url": "http://10.0.0.1/tool_1_all.deb",
                   "sha256": "c" * 64}],
        mounts=[{"source": "10.0.0.1:/home", "target": "/home/shared"}],
        tunnels=[{"name": "gre1", "remote": "10.0.0.2"}],
        startup={"command": "echo ready", "user": "ops", "timeout_s": 30},
    )
    raw = cloudinit.user_data(doc, "http://10.0.0.1:8080/", "TOKEN1")
    assert raw.startswith(b"#cloud-config\n")
    config = yaml.safe_load(raw)
    assert config["hostname"] == "web-1" and config["manage_etc_hosts"] is False
    assert config["users"] == [{
        "name": "ops", "shell": "/bin/bash", "uid": 2000, "groups": "adm, wheel",
        "ssh_authorized_keys": [KEY], "passwd": "$6$s$h", "lock_passwd": False,
        "sudo": "ALL=(ALL) NOPASSWD:ALL"}]
    hosts, motd = config["write_files"]
    assert hosts["append"] and "10.0.0.9 db.lab db\n" in hosts["content"]
    assert motd == {"path": "/etc/motd", "encoding": "b64", "content": "aGkK",
                    "permissions": "0600", "defer": True}
    assert config["mounts"] == [["10.0.0.1:/home", "/home/shared", "nfs", "defaults,nofail",
                                 "0", "0"]]
    runcmd = config["runcmd"]
    assert any("a" * 64 in c and "sha256sum -c" in c and "/opt/big.bin" in c for c in runcmd)
    assert any("b" * 64 in c and "tar -xf" in c for c in runcmd)
    assert any("c" * 64 in c and "dpkg -i" in c for c in runcmd)
    assert any("FLEETBOOT_SECTIONS=tunnels" in c and "client.sh" in c for c in runcmd)
    assert "timeout 30 su -s /bin/sh ops -c 'echo ready'" in runcmd[-2]
    assert "fb_result startup" in runcmd[-2]  # its result goes to the timeline
    assert "X-Fleetboot-Token: TOKEN1" in runcmd[0] and "state=UP" in runcmd[-1]


def test_cloud_config_runs_as_a_script_and_reports_results(sqlite_db: Database,
                                                            tmp_path: Path) -> None:
    """The runcmd lines run by sh with real curl against a real server, as cloud-init runs
    them: a required section that fails makes the last line report FAILED; every
    section's result is on the timeline."""
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    fleet = make_fleet(sqlite_db, names=("a",))
    a = fleet["a"]
    with sqlite_db.session() as s:
        store.set_section(s, "a", "tarballs", [{"url": "http://127.0.0.1:9/none.tgz",
                                                "sha256": "d" * 64}])  # refused: fails
        store.set_section(s, "a", "startup", {"command": "echo started"})
        store.set_section(s, "a", "required", ["tarballs"])
    directory = fleet.directory()
    directory.mapping["127.0.0.1"] = a.mac  # curl connects from 127.0.0.1
    with serve(sqlite_db, directory) as served:
        served.call(served.service.reload())
        token = served.token(a)
        user = httpx.get(cloudinit.seed_url(served.base_url, token) + "user-data")
        runcmd = yaml.safe_load(user.text)["runcmd"]
        script = "\n".join(runcmd).replace("/var/log/fleetboot", str(tmp_path / "log"))
        done = subprocess.run(["sh", "-c", script], capture_output=True, text=True,
                              timeout=120, check=False)
        served.settle()
        status = served.service.statuses[a.id]
        with sqlite_db.session() as s:
            events = {e.kind: e.detail for e in read_timeline(s, a.id)}
    assert status.state is State.FAILED, done.stderr
    assert status.message == "config/tarballs failed"
    assert events["config/tarballs"]["result"] == "failed"
    assert "exit status" in events["config/tarballs"]["reason"]
    assert events["config/startup"] == {"result": "ok"}
    assert (tmp_path / "log/startup.log").read_text() == "started\n"


def test_network_config_is_version_2_matched_by_mac() -> None:
    doc = _doc(interfaces=[{"mac": "52:54:00:00:00:07", "addresses": ["10.0.0.7/24"],
                            "mtu": 9000, "routes": [{"gateway": "10.0.0.1"}]},
                           {"name": "eth1", "dhcp": True}],
               routes=[{"destination": "10.8.0.0/16", "gateway": "10.0.0.254", "metric": 5}])
    net = yaml.safe_load(cloudinit.network_config(doc))
    assert net["version"] == 2
    eth0, eth1 = net["ethernets"]["eth0"], net["ethernets"]["eth1"]
    assert eth0["match"] == {"macaddress": "52:54:00:00:00:07"}
    assert eth0["addresses"] == ["10.0.0.7/24"] and eth0["mtu"] == 9000
    assert eth0["dhcp4"] is False
    assert eth0["routes"] == [{"to": "0.0.0.0/0", "via": "10.0.0.1"},
                              {"to": "10.8.0.0/16", "via": "10.0.0.254", "metric": 5}]
    assert eth1 == {"dhcp4": True}


def test_the_datasource_is_served_with_the_token_in_the_path(sqlite_db: Database) -> None:
    fleet = make_fleet(sqlite_db)
    a, b = fleet["a"], fleet["b"]
    with sqlite_db.session() as s:
        store.set_section(s, "a", "attributes", {"cloud_init": True})
    with serve(sqlite_db, fleet.directory()) as served:
        token = served.token(a)
        seed = cloudinit.seed_url(served.base_url, token)
        client = httpx.Client(transport=httpx.HTTPTransport(local_address=a.address))
        meta = client.get(seed + "meta-data")
        assert meta.status_code == 200
        assert yaml.safe_load(meta.text)["local-hostname"] == "host-a"
        user = yaml.safe_load(client.get(seed + "user-data").text)
        assert user["users"][0]["name"] == "user-a"  # a secret section: the token unlocked it
        assert yaml.safe_load(client.get(seed + "network-config").text)["version"] == 2
        assert client.get(seed + "vendor-data").status_code == 200
        assert client.get(seed + "nonsense").status_code == 404
        # another node's token, an old token, or a proxy: refused like the document is
        other = cloudinit.seed_url(served.base_url, served.token(b))
        assert client.get(other + "user-data").status_code == 401
        assert client.get(seed + "user-data",
                          headers={"X-Forwarded-For": "10.0.0.1"}).status_code == 403
        stranger = httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.99"))
        assert stranger.get(seed + "meta-data").status_code == 403
        # the command line of node a points cloud-init at the seed (its attribute asks for it)
        cmdline = served.service.cmdline_hook(node_ref(a), a.mac, a.address)
        new_token = cmdline.split("fleetboot.token=")[1].split()[0]
        assert f"ds=nocloud-net;s={served.base_url}/v1/self/nocloud/{new_token}/" in cmdline
        assert "ds=nocloud" not in served.service.cmdline_hook(node_ref(b), b.mac, b.address)
        served.settle()
        assert served.service.statuses[a.id].state.value == "CONFIGURING"


def test_every_node_gets_the_seed_when_the_setting_says_so(sqlite_db: Database) -> None:
    fleet = make_fleet(sqlite_db, names=("a",))
    a = fleet["a"]
    settings = NodeConfigSettings(base_url="http://10.0.0.1:8080", cloud_init=True)
    with serve(sqlite_db, fleet.directory(), settings) as served:
        cmdline = served.service.cmdline_hook(node_ref(a), a.mac, a.address)
    assert "ds=nocloud-net;s=http://10.0.0.1:8080/v1/self/nocloud/" in cmdline


_names = st.from_regex(r"[a-z][a-z0-9]{0,7}", fullmatch=True)
_macs = st.lists(st.integers(0, 255), min_size=3, max_size=3).map(
    lambda b: "52:54:00:" + ":".join(f"{x:02x}" for x in b))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(users=st.lists(_names, max_size=4, unique=True),
       command=st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1,
                       max_size=40),
       macs=st.lists(_macs, max_size=3, unique=True))
def test_any_document_gives_parseable_files(users: list[str], command: str,
                                            macs: list[str]) -> None:
    doc = _doc(accounts=[{"name": u, "ssh_keys": [KEY]} for u in users],
               interfaces=[{"mac": m, "addresses": ["10.1.0.2/24"]} for m in macs],
               startup={"command": command, "user": "root"})
    raw = cloudinit.user_data(doc, "http://10.0.0.1:8080", "T")
    assert raw.startswith(b"#cloud-config\n")
    config = yaml.safe_load(raw)
    assert [u["name"] for u in config.get("users", [])] == users
    stored = doc["startup"]["command"]  # as validated (surrounding blanks stripped)
    assert any(shlex.quote(stored) in c for c in config["runcmd"])  # quoted once, intact
    net = yaml.safe_load(cloudinit.network_config(doc))
    matched = {e.get("match", {}).get("macaddress") for e in net["ethernets"].values()}
    assert set(macs) <= matched
    assert yaml.safe_load(cloudinit.meta_data(doc))["instance-id"] == "fleetboot-n7"
