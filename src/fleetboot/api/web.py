"""The web view: one page of plain JavaScript written here (no CDN, nothing vendored),
served from the package by the same process as the API it reads.

``/`` redirects to ``/ui/``; the page asks for a token once, keeps it in
sessionStorage and in a same-site cookie (the cookie lets EventSource, which
cannot send headers, open ``/api/v1/events``; the API accepts the cookie for
reads only).
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

STATIC = Path(__file__).with_name("static")


async def _root(_: Request) -> Response:
    return RedirectResponse("/ui/", status_code=302)


def web_routes() -> list[BaseRoute]:
    return [Route("/", _root, methods=["GET"]),
            Mount("/ui", app=StaticFiles(directory=STATIC, html=True), name="ui")]
