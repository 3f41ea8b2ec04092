"""Answering ``GET /v1/self/config[/<section>]``: identity, variant, ETag. No I/O.

Who asks is decided by what the network says, never by what the request says:

1. a request carrying a proxy header (``X-Forwarded-For``, ``Forwarded``,
   ``X-Real-IP``, ...) is refused: Fleetboot has no trusted proxies, and a node
   behind one could not be told apart from the others;
2. the source address must hold a current lease (``LeaseDirectory``), whose
   MAC must be an interface of a registered node: that node is the requester;
3. a per-boot token (``X-Fleetboot-Token``), if sent, must be a current token
   *of that node*; it unlocks the secret sections. A wrong token is refused
   rather than ignored, so a node never silently gets less than it asked for.
   With ``require_token`` every request needs it (IMDSv2's "required" mode).

Every answer is bytes prepared at render time: the request path does a few
dict lookups, one substring test for ``If-None-Match`` and hands back bytes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from typing import Any

from fleetboot.nodeconfig.documents import DocumentCache
from fleetboot.nodeconfig.render import NodeDocuments, Rendered
from fleetboot.nodeconfig.sections import SECTIONS
from fleetboot.nodeconfig.tokens import TokenStore
from fleetboot.server.directory import LeaseDirectory

CONFIG_PATH = b"/v1/self/config"
TOKEN_HEADER = b"x-fleetboot-token"
_INM = b"if-none-match"
# Headers a proxy adds. Fleetboot trusts no proxy, so their presence alone refuses.
PROXY_HEADERS = frozenset({
    b"x-forwarded-for", b"forwarded", b"x-real-ip", b"x-forwarded-host", b"x-client-ip",
    b"true-client-ip", b"x-cluster-client-ip", b"client-ip", b"x-original-forwarded-for",
    b"cf-connecting-ip", b"fastly-client-ip", b"x-proxyuser-ip", b"via",
})

_SECTIONS = frozenset(SECTIONS)
_STATUS_TEXT = {200: b"OK", 304: b"Not Modified", 400: b"Bad Request", 401: b"Unauthorized",
                403: b"Forbidden", 404: b"Not Found"}
_STATUS_LINES = {code: b"HTTP/1.1 %d %s\r\n" % (code, text) for code, text in _STATUS_TEXT.items()}


class Reply:
    """A prepared answer, in both forms a server needs: raw header bytes and ASGI pairs."""

    __slots__ = ("asgi", "body", "etag", "etag_b", "head", "status")

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes,
                 etag: str = "") -> None:
        self.status = status
        self.asgi = headers
        # the header block without status line and final CRLF, for the raw protocol path
        self.head = b"".join(b"%s: %s\r\n" % kv for kv in headers)
        self.body = body
        self.etag = etag
        self.etag_b = etag.encode()  # for the If-None-Match substring test

    def status_line(self) -> bytes:
        return _STATUS_LINES.get(self.status) or (b"HTTP/1.1 %d \r\n" % self.status)

    def asgi_headers(self) -> list[tuple[bytes, bytes]]:
        return list(self.asgi)


def _headers(content_type: bytes, length: int | None, etag: str | None,
             ) -> list[tuple[bytes, bytes]]:
    out = [(b"content-type", content_type)]
    if length is not None:
        out.append((b"content-length", b"%d" % length))
    if etag:
        out.append((b"etag", b'"' + etag.encode() + b'"'))
    # Nodes may keep a copy but must ask again (with If-None-Match) before using it.
    out.append((b"cache-control", b"private, no-cache"))
    return out


def ok_reply(doc: Rendered) -> Reply:
    return Reply(200, _headers(b"application/json", len(doc.body), doc.etag), doc.body,
                 doc.etag)


def not_modified_reply(doc: Rendered | Reply) -> Reply:
    return Reply(304, _headers(b"application/json", None, doc.etag), b"", doc.etag)


def error_reply(status: int, message: str) -> Reply:
    body = json.dumps({"error": message}).encode() + b"\n"
    return Reply(status, _headers(b"application/json", len(body), None), body)


# (node documents, client address, reply, section, fetches folded into this one)
FetchHook = Callable[[NodeDocuments, str, "Reply", str, int], None]


class Denied(Exception):
    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.body.decode())
        self.reply = reply


def client_address(host: str) -> str:
    """``::ffff:10.0.0.5`` (a v4 client on a dual-stack socket) -> ``10.0.0.5``."""
    return host[7:] if host.startswith("::ffff:") else host


class ConfigResponder:
    """The hot path, shared by the raw protocol path, the ASGI wrapper and the routes."""

    def __init__(self, documents: DocumentCache, tokens: TokenStore, directory: LeaseDirectory,
                 on_fetch: FetchHook | None = None, clock: Callable[[], float] = time.time,
                 require_token: bool = False, fetch_event_interval_s: float = 2.0) -> None:
        self.documents = documents
        self.tokens = tokens
        self.directory = directory
        self.on_fetch = on_fetch
        self.clock = clock
        self.require_token = require_token
        self.fetch_event_interval_s = fetch_event_interval_s
        self.fetches = 0  # answered with 200 or 304
        self.denied = {"proxy": 0, "lease": 0, "node": 0, "token": 0, "section": 0}
        self._seen: dict[int, list[Any]] = {}  # node id -> [last event at, status, repeats]
        self._proxy = error_reply(403, "requests through a proxy are refused: Fleetboot "
                                  "identifies a node by its own address (X-Forwarded-For, "
                                  "Forwarded, X-Real-IP and the like are not accepted)")
        self._bad_token = error_reply(401, "the token is not valid for this node: it belongs "
                                      "to another node or an earlier boot, or it expired; "
                                      "boot the node through Fleetboot for a new one")
        self._need_token = error_reply(401, "this server requires the per-boot token in the "
                                       "X-Fleetboot-Token header")

    # --- identity ---

    def resolve(self, client: str, headers: Iterable[tuple[bytes, bytes]],
                ) -> tuple[NodeDocuments | Reply, bool, bytes | None]:
        """(node documents, token verified, If-None-Match), or (the refusal, False, None).

        Written flat on purpose: it runs for every request on the hot path.
        """
        token = inm = None
        for name, value in headers:
            if name == TOKEN_HEADER:
                token = value
            elif name == _INM:
                inm = value
            elif name in PROXY_HEADERS:
                self.denied["proxy"] += 1
                return self._proxy, False, None
        if client.startswith("::ffff:"):
            client = client[7:]
        mac = self.directory.mac_for_address(client)
        docs = self.documents.view.by_mac.get(mac) if mac is not None else None
        if docs is None:
            return self._unknown(client, mac), False, None
        if token is None:
            if self.require_token:
                self.denied["token"] += 1
                return self._need_token, False, None
            return docs, False, inm
        if not self.tokens.check(token.decode("latin-1"), docs.node_id, self.clock()):
            self.denied["token"] += 1
            return self._bad_token, False, None
        return docs, True, inm

    def identify(self, client: str, headers: Iterable[tuple[bytes, bytes]],
                 ) -> tuple[NodeDocuments, bool, bytes | None]:
        """Like ``resolve``, raising ``Denied`` (for the routes)."""
        docs, trusted, inm = self.resolve(client, headers)
        if isinstance(docs, Reply):
            raise Denied(docs)
        return docs, trusted, inm

    def _unknown(self, client: str, mac: str | None) -> Reply:
        if mac is None:
            self.denied["lease"] += 1
            explain = getattr(self.directory, "explain", None)
            why = explain(client) if explain is not None else \
                f"{client} holds no current lease from Fleetboot"
            return error_reply(403, f"{why}; configuration is served to identified node "
                               "addresses only")
        self.denied["node"] += 1
        return error_reply(403, f"{client} ({mac}) is not an interface of a registered node; "
                           "add it with `fleetboot node add`")

    # --- the answer ---

    def answer(self, client: str, path: bytes, headers: Iterable[tuple[bytes, bytes]],
               ) -> Reply | None:
        """The reply for a GET of ``path``, or None when ``path`` is not ours."""
        if path == CONFIG_PATH:
            section = ""
        else:
            found = self._section(path)
            if found is None:
                return None
            section = found
        docs, trusted, inm = self.resolve(client, headers)
        if isinstance(docs, Reply):
            return docs
        # Prepared replies live with the node's documents (which outlive unchanged reloads).
        reply = docs.replies.get((section, trusted))
        if reply is None:
            if section:
                doc = self._section_doc(docs, trusted, section)
                if isinstance(doc, Reply):
                    return doc
            else:
                doc = docs.full if trusted else docs.public
            reply = docs.replies[(section, trusted)] = ok_reply(doc)
        if inm is not None and (inm == b"*" or reply.etag_b in inm):
            reply = docs.replies.get((section, trusted, 304)) or docs.replies.setdefault(
                (section, trusted, 304), not_modified_reply(reply))
        self._count(docs, client, reply, section)
        return reply

    def _count(self, docs: NodeDocuments, client: str, reply: Reply, section: str) -> None:
        # One timeline event per node per interval; repeats are counted into the next one.
        self.fetches += 1
        if self.on_fetch is None:
            return
        now = self.clock()
        seen = self._seen.get(docs.node_id)
        if (seen is not None and now - seen[0] < self.fetch_event_interval_s
                and seen[1] == reply.status):
            seen[2] += 1
            return
        self._seen[docs.node_id] = [now, reply.status, 0]
        self.on_fetch(docs, client_address(client), reply, section,
                      seen[2] if seen is not None else 0)

    @staticmethod
    def _section(path: bytes) -> str | None:
        path = path.split(b"?", 1)[0]
        if path == CONFIG_PATH or path == CONFIG_PATH + b"/":
            return ""
        if not path.startswith(CONFIG_PATH + b"/"):
            return None
        return path[len(CONFIG_PATH) + 1:].decode("latin-1")

    def _section_doc(self, docs: NodeDocuments, trusted: bool, section: str,
                     ) -> Rendered | Reply:
        if section not in _SECTIONS:
            return unknown_section_reply(section)
        doc = docs.section(section, trusted)
        if doc is None:
            self.denied["section"] += 1
            return error_reply(401, f"section {section} holds secrets: send the per-boot "
                               "token (X-Fleetboot-Token) to read it")
        return doc



def unknown_section_reply(section: str) -> Reply:
    return error_reply(404, f"no section {section!r}; sections are: {', '.join(SECTIONS)}")

