"""What the booted OS does on Fleetboot, like the shipped shell client does.

The iPXE script puts ``fleetboot.url=`` and the per-boot ``fleetboot.token=``
on the kernel command line. The OS fetches its whole configuration in one
``GET /v1/self/config`` with the token in ``X-Fleetboot-Token`` and reports
``POST /v1/self/state`` with ``state=UP``.
"""

from __future__ import annotations

from typing import Any

from fleetboot.storm.httpc import HttpClient
from fleetboot.storm.node import Booted, BootFailed, expect_status, json_object

TOKEN_HEADER = "X-Fleetboot-Token"


class FleetbootAgent:
    def __init__(self, server_ip: str, http_port: int) -> None:
        self.default_base = f"http://{server_ip}:{http_port}"

    def _base_and_token(self, node: Booted) -> tuple[str, str]:
        token = node.script.param("fleetboot.token")
        if not token:
            raise BootFailed("the kernel command line has no fleetboot.token=")
        base = node.script.param("fleetboot.url") or self.default_base
        return base.rstrip("/"), token

    async def fetch_config(self, http: HttpClient, node: Booted) -> dict[str, Any]:
        base, token = self._base_and_token(node)
        url = f"{base}/v1/self/config"
        doc = json_object(await http.request("GET", url, headers={TOKEN_HEADER: token},
                                       keep_body=True), url)
        hostname = doc.get("hostname")
        if hostname is not None and not str(hostname).startswith(node.spec.name):
            raise BootFailed(f"{url} returned the configuration of {hostname!r}")
        return doc

    async def report_up(self, http: HttpClient, node: Booted) -> None:
        base, token = self._base_and_token(node)
        url = f"{base}/v1/self/state"
        response = await http.request(
            "POST", url, body=b"state=UP&message=storm",
            headers={TOKEN_HEADER: token,
                     "Content-Type": "application/x-www-form-urlencoded"},
            keep_body=True)
        expect_status(response, url, (200, 202, 204))
