"""`fleetboot serve --log-format json`: every log line the server writes is one JSON object."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml
from api_helpers import free_port


def test_serve_writes_json_logs(tmp_path: Path) -> None:
    config = tmp_path / "fleetboot.yaml"
    config.write_text(yaml.safe_dump({
        "boot_root": str(tmp_path / "boot"), "state_dir": str(tmp_path),
        "database": {"url": f"sqlite:///{tmp_path}/fb.db"},
        "dhcp": {"enabled": False}, "tftp": {"enabled": False},
        "http": {"host": "127.0.0.1", "port": free_port()}}))
    ready = tmp_path / "ready"
    proc = subprocess.Popen([sys.executable, "-m", "fleetboot.cli", "-c", str(config), "serve",
                             "--log-format", "json", "--ready-file", str(ready)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.exists(), proc.stderr.read() if proc.stderr else ""
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines, "no log lines"
    docs = [json.loads(line) for line in lines]
    assert all({"ts", "level", "logger", "message"} <= set(d) for d in docs)
    assert any(d["logger"] == "fleetboot.nodeconfig" for d in docs)
