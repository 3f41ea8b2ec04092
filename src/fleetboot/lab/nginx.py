"""nginx as a static file server in a lab namespace (Range, sendfile): a reference peer."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from fleetboot.lab.netns import Namespace


def start_nginx(ns: Namespace, root: Path, work: Path, listen: str) -> subprocess.Popen[bytes]:
    """Serve ``root`` on ``listen`` (ip:port) from namespace ``ns``; stop with stop_process.

    ``send_timeout`` is long: 32 TCP flows behind one capped link starve some of them
    for over nginx's default 60 s, and nginx then cuts their downloads short."""
    conf = work / "nginx.conf"
    temp = "".join(f"  {k}_temp_path {work};\n"
                   for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    # user root: the lab's work directories are private to root.
    conf.write_text(f"user root;\nworker_processes 1;\npid {work}/nginx.pid;\n"
                    f"error_log {work}/nginx.err;\n"
                    "daemon off;\nevents { worker_connections 1024; }\n"
                    f"http {{\n  access_log off;\n  sendfile on;\n  send_timeout 600s;\n{temp}"
                    f"  server {{ listen {listen}; root {root}; }}\n}}\n")
    proc = ns.popen(["nginx", "-c", str(conf), "-p", str(work)], stderr=subprocess.DEVNULL)
    for _ in range(100):
        if ns.run(["curl", "-s", "-o", "/dev/null", f"http://{listen}/"],
                  check=False).returncode == 0:
            break
        time.sleep(0.1)
    return proc
