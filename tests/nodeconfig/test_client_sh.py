"""The shell client, run for real by busybox against a real uvicorn server."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nodeconfig_helpers import make_fleet, serve

from fleetboot.inventory.db import Database
from fleetboot.nodeconfig.api import client_script
from fleetboot.nodeconfig.render import dumps, render_lines
from fleetboot.nodeconfig.states import State
from fleetboot.nodeconfig.timeline import read_timeline

BUSYBOX = shutil.which("busybox")
pytestmark = pytest.mark.skipif(BUSYBOX is None, reason="busybox-static is not installed")


@pytest.fixture(scope="module")
def busybox_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PATH of busybox applets only: what a stock initramfs has, no host tools."""
    bindir = tmp_path_factory.mktemp("bb") / "bin"
    bindir.mkdir()
    subprocess.run([str(BUSYBOX), "--install", "-s", str(bindir)], check=True)
    return bindir


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "fleetboot-client.sh"
    path.write_bytes(client_script())
    return path


def run_client(busybox_bin: Path, script: Path, env: dict[str, str], *args: str,
               uts: bool = False) -> subprocess.CompletedProcess[str]:
    full_env = {"PATH": str(busybox_bin), **env}
    argv = [str(busybox_bin / "sh"), str(script), *args]
    if uts:  # a private UTS namespace: setting the hostname leaves the host's alone
        argv = ["unshare", "--uts", "--", str(busybox_bin / "sh"), "-c",
                '"$0" "$1" "$2" && echo "HOSTNAME=$(hostname)"', *argv]
    return subprocess.run(argv, env=full_env, capture_output=True, text=True, timeout=60)


def test_the_client_fetches_once_caches_applies_and_reports_up(
        sqlite_db: Database, busybox_bin: Path, script: Path, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root for a private UTS namespace (the hostname is applied)")
    fleet = make_fleet(sqlite_db)
    a = fleet["a"]
    # busybox wget cannot pick a source address: this node's lease is on 127.0.0.1
    directory = fleet.directory()
    directory.mapping["127.0.0.1"] = a.mac
    with serve(sqlite_db, directory) as served:
        env = {"FLEETBOOT_URL": served.base_url, "FLEETBOOT_TOKEN": served.token(a),
               "FLEETBOOT_CACHE": str(tmp_path / "cache"),
               "FLEETBOOT_ROOT": str(tmp_path / "root"), "FLEETBOOT_BOOT_ID": "boot-1"}
        done = run_client(busybox_bin, script, env, "boot", uts=True)
        assert done.returncode == 0, done.stdout + done.stderr
        lines = done.stdout.splitlines()
        assert lines[0].startswith("FLEETBOOT-CONFIG fetched ") and "sections=17" in lines[0]
        assert "FLEETBOOT-CONFIG hostname name=host-a" in lines
        assert "FLEETBOOT-CONFIG file path=/etc/motd bytes=21" in lines
        assert "FLEETBOOT-STATE UP" in lines and "HOSTNAME=host-a" in lines
        assert (tmp_path / "root/etc/motd").read_text() == "welcome to the fleet\n"
        assert (tmp_path / "root/etc/hostname").read_text() == "host-a\n"
        # The account is applied too (into FLEETBOOT_ROOT's /etc), reported per section
        assert "FLEETBOOT-CONFIG section name=accounts result=ok" in lines
        assert "user-a:x:1000:1000:" in (tmp_path / "root/etc/passwd").read_text()
        assert "wheel:x:1001:user-a" in (tmp_path / "root/etc/group").read_text()
        keys = (tmp_path / "root/home/user-a/.ssh/authorized_keys").read_text()
        assert keys.startswith("ssh-ed25519 ")
        assert served.service.fetches == 1

        # Later questions are answered from the cache: no request reaches the server.
        def get(*args: str) -> str:
            out = run_client(busybox_bin, script, env, "get", *args)
            assert out.returncode == 0, out.stderr
            return out.stdout.rstrip("\n")

        assert get("hostname", "") == "host-a"
        assert get("accounts", "0.name") == "user-a"
        assert get("accounts", "0.ssh_keys.0").startswith("ssh-ed25519 ")
        assert json.loads(get("accounts"))[0]["groups"] == ["wheel"]
        assert get("interfaces", "0.mac") == a.mac
        assert run_client(busybox_bin, script, env, "get", "rpms").returncode == 1
        sections = run_client(busybox_bin, script, env, "sections").stdout.split()
        assert {"accounts", "files", "hostname", "mounts", "attributes"} <= set(sections)
        again = run_client(busybox_bin, script, env, "boot", uts=True)  # same boot
        assert again.returncode == 0 and "fetched" not in again.stdout
        assert served.service.fetches == 1  # one request per boot

        refreshed = run_client(busybox_bin, script, env, "fetch", "--refresh")
        assert "FLEETBOOT-CONFIG unchanged" in refreshed.stdout  # a 304
        served.settle()
        assert served.service.statuses[a.id].state is State.UP
        with sqlite_db.session() as s:
            events = read_timeline(s, a.id)
        seen = [(e.source, e.kind) for e in events]
        assert seen[0] == ("config", "config") and seen[5] == ("node", "state")
        assert set(seen[1:5]) == {("node", f"config/{name}") for name in (
            "hostname", "interfaces", "accounts", "files")}  # one report for every section
        assert events[0].detail["status"] == 200 and events[5].detail["state"] == "UP"
        assert all(e.detail == {"result": "ok"} for e in events[1:5])


def test_a_wrong_token_fails_cleanly(sqlite_db: Database, busybox_bin: Path, script: Path,
                                     tmp_path: Path) -> None:
    fleet = make_fleet(sqlite_db)
    directory = fleet.directory()
    directory.mapping["127.0.0.1"] = fleet["a"].mac
    with serve(sqlite_db, directory) as served:
        served.token(fleet["a"])
        env = {"FLEETBOOT_URL": served.base_url, "FLEETBOOT_TOKEN": "guessed-token",
               "FLEETBOOT_CACHE": str(tmp_path / "cache"), "FLEETBOOT_BOOT_ID": "b"}
        done = run_client(busybox_bin, script, env, "fetch")
        assert done.returncode == 1
        assert "FLEETBOOT-CONFIG fetch-failed" in done.stdout and "status=401" in done.stdout
        assert served.service.fetches == 0
        missing = run_client(busybox_bin, script, env, "get", "hostname")
        assert missing.returncode == 1 and "nothing cached yet" in missing.stderr


def _flat_reference(value: Any, path: str = "") -> list[tuple[str, str]]:
    """What the client's awk must produce for ``value`` (Python's reading of the JSON)."""
    def join(k: object) -> str:
        return f"{path}.{k}" if path else str(k)

    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _flat_reference(v, join(k))] or [(path, "{}")]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _flat_reference(v, join(i))] or [
            (path, "[]")]
    if isinstance(value, str):
        # control characters stay escaped, everything else is the decoded text
        return [(path, json.dumps(value, ensure_ascii=False)[1:-1]
                 .replace('\\"', '"').replace("\\\\", "\\"))]
    return [(path, dumps(value).decode())]


_keys = st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True)
_scalars = st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats(
    allow_nan=False, allow_infinity=False, width=32) | st.text(max_size=30)
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4)
                       | st.dictionaries(_keys, inner, max_size=4), max_leaves=12)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=st.dictionaries(_keys, _values, min_size=1, max_size=6))
def test_the_awk_reader_agrees_with_python(doc: dict[str, Any], busybox_bin: Path, script: Path,
                                           tmp_path: Path) -> None:
    body = render_lines([(k, dumps(v)) for k, v in doc.items()])
    cache = Path(tempfile.mkdtemp(dir=tmp_path))
    (cache / "in.json").write_bytes(body)
    done = run_client(busybox_bin, script, {"FLEETBOOT_CACHE": str(cache)}, "import",
                      str(cache / "in.json"))
    assert done.returncode == 0, done.stderr
    for key, value in doc.items():
        raw = (cache / "sections" / f"{key}.json").read_bytes().rstrip(b"\n")
        assert json.loads(raw) == json.loads(dumps(value))
        # split on \n only: the other Unicode line breaks are ordinary bytes to the client
        flat = (cache / "sections" / f"{key}.flat").read_text().split("\n")[:-1]
        want = [f"{p}\t{v}" for p, v in _flat_reference(json.loads(dumps(value)))]
        assert sorted(flat) == sorted(want)
