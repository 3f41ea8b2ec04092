"""The node agent's file-based sections, run by busybox against a real server, in a temp root.

Network sections (interfaces, routes, tunnels, shaping) and mounts change the machine
they run on: they are checked inside a real guest (test_agent_vm.py). Here, with
``FLEETBOOT_ROOT`` pointing into a temporary directory, the sections that write files
are run for real: hosts, accounts, files, startup; their per-section report, the
``required`` rule (FAILED naming the section) and idempotence.
"""

from __future__ import annotations

import importlib.resources
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
from nodeconfig_helpers import make_fleet, serve
from test_client_sh import busybox_bin, run_client, script  # noqa: F401 (fixtures)

from fleetboot.inventory.db import Database
from fleetboot.nodeconfig import store
from fleetboot.nodeconfig.api import client_script, parse_results
from fleetboot.nodeconfig.errors import NodeConfigError
from fleetboot.nodeconfig.sections import APPLIED, SECTIONS, validate_section
from fleetboot.nodeconfig.states import State
from fleetboot.nodeconfig.timeline import read_timeline

FILE_SECTIONS = "hostname,hosts,accounts,files,tarballs,startup"


def _env(served: object, token: str, tmp: Path) -> dict[str, str]:
    return {"FLEETBOOT_URL": served.base_url, "FLEETBOOT_TOKEN": token,  # type: ignore[attr-defined]
            "FLEETBOOT_CACHE": str(tmp / "cache"), "FLEETBOOT_ROOT": str(tmp / "root"),
            "FLEETBOOT_BOOT_ID": "boot-1", "FLEETBOOT_SECTIONS": FILE_SECTIONS}


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and "fleetboot/startup" not in str(p)}


def test_file_sections_apply_idempotently_and_report(
        sqlite_db: Database, busybox_bin: Path, script: Path, tmp_path: Path) -> None:  # noqa: F811
    fleet = make_fleet(sqlite_db, names=("a",))
    a = fleet["a"]
    with sqlite_db.session() as s:
        store.set_section(s, "a", "hosts", [{"address": "10.9.0.7", "names": ["db.lab", "db"]}])
        store.set_section(s, "a", "accounts", [
            {"name": "bob", "uid": 3000, "groups": ["wheel", "adm"], "sudo": True,
             "ssh_keys": ["ssh-ed25519 AAAAkey bob@lab"], "shell": "/bin/bash"},
            {"name": "carol", "password_hash": "$6$x$hash"}])
        store.set_section(s, "a", "startup", {"command": "echo hello from startup; id -u",
                                              "timeout_s": 5})
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/hosts").write_text("127.0.0.1 localhost\n10.0.0.1 kept-by-others\n")
    (root / "etc/group").write_text("root:x:0:\nadm:x:4:alice\n")
    directory = fleet.directory()
    directory.mapping["127.0.0.1"] = a.mac
    with serve(sqlite_db, directory) as served:
        env = _env(served, served.token(a), tmp_path)
        done = run_client(busybox_bin, script, env, "boot", uts=True)
        assert done.returncode == 0, done.stdout + done.stderr
        first = _snapshot(root)
        again = run_client(busybox_bin, script, env, "apply", uts=True)
        assert again.returncode == 0, again.stdout + again.stderr
        assert _snapshot(root) == first  # a second run changes nothing
        served.settle()
        with sqlite_db.session() as s:
            events = read_timeline(s, a.id)
    hosts = (root / "etc/hosts").read_text()
    assert "10.0.0.1 kept-by-others" in hosts and "10.9.0.7 db.lab db" in hosts
    assert hosts.count("# BEGIN fleetboot") == 1
    passwd = (root / "etc/passwd").read_text()
    assert "bob:x:3000:3000:bob:/home/bob:/bin/bash" in passwd
    # carol gets the first free uid; gid 1000 went to the new group wheel, so hers is 1001
    assert "carol:x:1000:1001:carol:/home/carol:/bin/sh" in passwd
    group = (root / "etc/group").read_text().splitlines()
    assert {"adm:x:4:alice,bob", "wheel:x:1000:bob", "bob:x:3000:", "carol:x:1001:"} <= set(group)
    assert "carol:$6$x$hash:" in (root / "etc/shadow").read_text()
    assert (root / "etc/shadow").stat().st_mode & 0o777 == 0o600
    assert "bob:*:" in (root / "etc/shadow").read_text()
    assert (root / "etc/sudoers.d/90-fleetboot-bob").read_text() == "bob ALL=(ALL) NOPASSWD:ALL\n"
    assert not (root / "etc/sudoers.d/90-fleetboot-carol").exists()
    keys = root / "home/bob/.ssh/authorized_keys"
    assert keys.read_text() == "ssh-ed25519 AAAAkey bob@lab\n"
    assert keys.stat().st_mode & 0o777 == 0o600 and keys.stat().st_uid == 3000
    assert (root / "var/log/fleetboot/startup.log").read_text() == "hello from startup\n0\n"
    results = {e.kind: e.detail["result"] for e in events if e.kind.startswith("config/")}
    assert results == {f"config/{s}": "ok" for s in ("hostname", "hosts", "accounts", "files",
                                                     "startup")}


def test_a_required_section_that_fails_fails_the_boot(
        sqlite_db: Database, busybox_bin: Path, script: Path, tmp_path: Path) -> None:  # noqa: F811
    fleet = make_fleet(sqlite_db, names=("a",))
    a = fleet["a"]
    directory = fleet.directory()
    directory.mapping["127.0.0.1"] = a.mac
    with serve(sqlite_db, directory) as served:
        bad = f"{served.base_url}/v1/self/client.sh"  # served, but not the checksum given
        with sqlite_db.session() as s:
            store.set_section(s, "a", "tarballs", [{"url": bad, "sha256": "ab" * 32}])
            store.set_section(s, "a", "startup", {"command": "sleep 30", "timeout_s": 1})
            store.set_section(s, "a", "required", ["tarballs"])
        served.call(served.service.reload())
        done = run_client(busybox_bin, script, _env(served, served.token(a), tmp_path), "boot",
                          uts=True)
        assert done.returncode == 1
        assert "FLEETBOOT-CONFIG section name=tarballs result=failed" in done.stdout
        assert "FLEETBOOT-STATE FAILED" in done.stdout
        served.settle()
        status = served.service.statuses[a.id]
        with sqlite_db.session() as s:
            events = read_timeline(s, a.id)
    assert status.state is State.FAILED
    assert status.message.startswith("config/tarballs failed: checksum mismatch for ")
    details = {e.kind: e.detail for e in events}
    assert "want " + "ab" * 32 in details["config/tarballs"]["reason"]
    # the startup command ran into its timeout: reported, not required, so not the cause
    assert details["config/startup"]["result"] == "failed"
    assert "exited with 143" in details["config/startup"]["reason"] or \
        "exited with 124" in details["config/startup"]["reason"]


def test_the_report_route_needs_the_token_and_known_sections(sqlite_db: Database) -> None:
    fleet = make_fleet(sqlite_db, names=("a",))
    a = fleet["a"]
    directory = fleet.directory()
    directory.mapping["127.0.0.1"] = a.mac
    with serve(sqlite_db, directory) as served:
        url = f"{served.base_url}/v1/self/report"
        assert httpx.post(url, content="mounts=ok").status_code == 401
        token = {"X-Fleetboot-Token": served.token(a)}
        refused = httpx.post(url, content="rpms=ok", headers=token)
        assert refused.status_code == 400 and "rpms" in refused.json()["error"]
        assert httpx.post(url, content="mounts=maybe", headers=token).status_code == 400
        done = httpx.post(url, content="mounts=failed+no+route&tunnels=ok", headers=token)
        assert done.status_code == 202 and done.json()["sections"] == ["mounts", "tunnels"]


def test_results_and_required_are_parsed_strictly() -> None:
    assert parse_results({"mounts": "failed: no route to host", "hosts": "ok"}) == {
        "mounts": (False, "no route to host"), "hosts": (True, "")}
    assert parse_results({"tarballs": "failed  checksum"}) == {"tarballs": (False, "checksum")}
    with pytest.raises(ValueError, match="'ok' or 'failed"):
        parse_results({"hosts": "fine"})
    assert validate_section("required", ["mounts", "accounts", "mounts"]) == ["accounts",
                                                                                "mounts"]
    with pytest.raises(NodeConfigError, match="cannot require attributes"):
        validate_section("required", ["attributes"])
    assert set(APPLIED) < set(SECTIONS)


def test_the_shell_agent_and_python_agree_on_the_sections_applied(script: Path) -> None:  # noqa: F811
    line = next(x for x in script.read_text().splitlines() if x.startswith("APPLIED="))
    assert tuple(line.split("=", 1)[1].strip('"').split()) == APPLIED
    # every applied section has its apply_ function
    text = script.read_text()
    assert all(f"apply_{name}()" in text for name in APPLIED)
    subprocess.run(["sh", "-n", str(script)], check=True)


def test_the_agent_unit_file_is_valid(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    unit = (importlib.resources.files("fleetboot.nodeconfig")
            .joinpath("client/fleetboot-agent.service").read_text())
    assert "ExecStart=/usr/local/sbin/fleetboot-client boot" in unit
    agent = tmp_path / "fleetboot-client"
    agent.write_bytes(client_script())
    agent.chmod(0o755)
    copy = tmp_path / "fleetboot-agent.service"  # verify checks that ExecStart exists
    copy.write_text(unit.replace("/usr/local/sbin/fleetboot-client", str(agent)))
    result = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_without_wget_the_agent_uses_curl(
        sqlite_db: Database, busybox_bin: Path, script: Path, tmp_path: Path) -> None:  # noqa: F811
    """Minimal Debian images have curl and no wget: fetch, 304, report and UP all work."""
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in busybox_bin.iterdir():
        if tool.name not in ("wget", "sh"):
            (bindir / tool.name).symlink_to(tool.resolve())
    (bindir / "curl").symlink_to(curl)
    # Debian's sh (dash): busybox's sh would find its own wget applet whatever PATH says
    (bindir / "sh").symlink_to(shutil.which("dash") or "/bin/sh")
    fleet = make_fleet(sqlite_db, names=("a",))
    a = fleet["a"]
    directory = fleet.directory()
    directory.mapping["127.0.0.1"] = a.mac
    with serve(sqlite_db, directory) as served:
        env = _env(served, served.token(a), tmp_path)
        done = run_client(bindir, script, env, "boot", uts=True)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "sections=17" in done.stdout and "FLEETBOOT-STATE UP" in done.stdout
        no_wget = subprocess.run([str(bindir / "sh"), "-c", "command -v wget"],
                                 env={"PATH": str(bindir)}, capture_output=True, check=False)
        assert no_wget.returncode != 0  # so curl did the work
        assert done.stdout.count("etag=\"") == 1  # the ETag read from curl's headers
        refreshed = run_client(bindir, script, env, "fetch", "--refresh")
        assert "FLEETBOOT-CONFIG unchanged" in refreshed.stdout, refreshed.stdout
        served.settle()
        assert served.service.statuses[a.id].state is State.UP
        with sqlite_db.session() as s:
            kinds = {e.kind for e in read_timeline(s, a.id)}
    assert {"config/accounts", "config/files", "state"} <= kinds
