"""A node's document as cloud-init's NoCloud-net datasource serves it. Pure.

Stock distribution images configure themselves with cloud-init; booted with
``ds=nocloud-net;s=<base>/v1/self/nocloud/<token>/`` they fetch ``meta-data``,
``user-data`` (``#cloud-config``) and ``network-config`` (version 2) from
Fleetboot, which renders them here from the same per-node document the node
agent reads. What cloud-init has no module for (tunnels, shaping) and what must
be checked by sha256 (tarballs, packages and files given by URL) is done by
``runcmd`` lines, which report each such section's result on the timeline; the last
one reports the node UP, or FAILED when a required section failed. The table is in
docs/nodeconfig.md.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

NOCLOUD_PATH = "/v1/self/nocloud/"
FILES = ("meta-data", "user-data", "network-config", "vendor-data")
# Sections cloud-init has no module for: the node agent applies them (fetched by runcmd).
AGENT_SECTIONS = ("tunnels", "shaping")
_HTTP_GET = ("curl -fsS --max-time 300 -o {out} {url} || wget -q -T 300 -O {out} {url}")


def seed_url(base_url: str, token: str) -> str:
    """What ``s=`` says: cloud-init appends the file names to it (so it ends in /)."""
    return f"{base_url.rstrip('/')}{NOCLOUD_PATH}{token}/"


def kernel_arg(base_url: str, token: str) -> str:
    """The kernel argument that points cloud-init at Fleetboot."""
    return f"ds=nocloud-net;s={seed_url(base_url, token)}"


def _dump(value: Any, header: str = "") -> bytes:
    return (header + yaml.safe_dump(value, sort_keys=False, default_flow_style=False,
                                    width=1 << 16)).encode()


def instance_id(doc: Mapping[str, Any]) -> str:
    # Stable per node: a new instance-id makes cloud-init redo its once-per-instance work
    # (users, SSH host keys) on a machine that is still the same machine.
    return f"fleetboot-{doc['node']}"


def _fqdn(doc: Mapping[str, Any]) -> str:
    host, domain = str(doc.get("hostname") or doc["node"]), doc.get("domain")
    return f"{host}.{domain}" if domain else host


def meta_data(doc: Mapping[str, Any]) -> bytes:
    return _dump({"instance-id": instance_id(doc), "local-hostname": _fqdn(doc)})


def _user(account: Mapping[str, Any]) -> dict[str, Any]:
    user: dict[str, Any] = {"name": account["name"], "shell": account.get("shell", "/bin/sh")}
    if account.get("uid") is not None:
        user["uid"] = account["uid"]
    if account.get("home"):
        user["homedir"] = account["home"]
    if account.get("groups"):
        user["groups"] = ", ".join(account["groups"])
    if account.get("ssh_keys"):
        user["ssh_authorized_keys"] = list(account["ssh_keys"])
    if account.get("password_hash"):
        user["passwd"] = account["password_hash"]
        user["lock_passwd"] = False
    if account.get("sudo"):
        user["sudo"] = "ALL=(ALL) NOPASSWD:ALL"
    return user


def _hosts_lines(doc: Mapping[str, Any]) -> str:
    fqdn, short = _fqdn(doc), str(doc.get("hostname") or doc["node"])
    lines = [f"127.0.1.1 {fqdn} {short}" if fqdn != short else f"127.0.1.1 {short}"]
    lines += [f"{h['address']} {' '.join(h['names'])}" for h in doc.get("hosts") or ()]
    return "".join(f"{line}\n" for line in lines)


def _write_files(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{"path": "/etc/hosts", "append": True,
                                  "content": "# fleetboot\n" + _hosts_lines(doc)}]
    for f in doc.get("files") or ():
        if "content_b64" not in f:
            continue  # by URL: runcmd downloads and checks it
        item = {"path": f["path"], "encoding": "b64", "content": f["content_b64"],
                "permissions": f.get("mode", "0644"), "defer": True}
        if f.get("owner"):
            item["owner"] = f["owner"]
        out.append(item)
    return out


def _fetch_checked(url: str, sha256: str, out: str) -> str:
    get = _HTTP_GET.format(out=shlex.quote(out), url=shlex.quote(url))
    check = f"echo {shlex.quote(f'{sha256}  {out}')} | sha256sum -c --quiet"
    return f"( {get} ) && {check}"


def _downloads(doc: Mapping[str, Any]) -> dict[str, list[str]]:
    """Shell commands per section for what is fetched by URL and checked by sha256."""
    cmds: dict[str, list[str]] = {}
    for f in doc.get("files") or ():
        if "url" in f:
            path, part = shlex.quote(f["path"]), shlex.quote(f"{f['path']}.fleetboot")
            folder = shlex.quote(f["path"].rsplit("/", 1)[0] or "/")
            fetched = _fetch_checked(f["url"], f["sha256"], f"{f['path']}.fleetboot")
            cmds.setdefault("files", []).append(
                f"mkdir -p {folder} && {fetched} && chmod {f.get('mode', '0644')} "
                f"{part} && mv {part} {path}")
    for i, t in enumerate(doc.get("tarballs") or ()):
        part = f"/run/fleetboot-tarball-{i}"
        dest = shlex.quote(t.get("dest", "/"))
        cmds.setdefault("tarballs", []).append(
            f"mkdir -p {dest} && {_fetch_checked(t['url'], t['sha256'], part)} && "
            f"tar -xf {part} -C {dest}; fb_x=$?; rm -f {part}; exit $fb_x")
    for p in doc.get("packages") or ():
        url = str(p["url"])
        kind = "deb" if url.endswith(".deb") else "rpm" if url.endswith(".rpm") else "tar"
        part = f"/run/fleetboot-package-{p['name']}.{kind}"
        install = {"deb": f"dpkg -i {part}", "rpm": f"rpm -i {part}",
                   "tar": f"tar -xf {part} -C /"}[kind]
        cmds.setdefault("packages", []).append(
            f"{_fetch_checked(url, p['sha256'], part)} && {install}; fb_x=$?; rm -f {part}; "
            "exit $fb_x")
    return cmds


def _section_line(section: str, commands: Sequence[str]) -> str:
    """Every command of a section is tried; the section's result goes to the timeline."""
    tries = " ".join(f"( {c} ) || fb_rc=$?;" for c in commands)
    return f"fb_rc=0; {tries} fb_result {section} $fb_rc"


def _prologue(base_url: str, token: str, required: Sequence[str]) -> str:
    """Shell functions the other runcmd lines use (cloud-init runs them as one script).

    ``fb_result SECTION RC`` posts ``SECTION=ok`` or ``SECTION=failed: exit status RC``
    to ``/v1/self/report`` and remembers the first required section that failed.
    """
    header = shlex.quote(f"X-Fleetboot-Token: {token}")
    base = shlex.quote(base_url)
    post = (f'fb_post() {{ curl -fsS --max-time 20 -o /dev/null -H {header} --data "$2" '
            f'{base}"$1" || wget -q -T 20 -O /dev/null --header {header} '
            f'--post-data "$2" {base}"$1"; }}')
    mark = ('fb_mark() { case "$FB_REQUIRED" in *" $1 "*) '
            '[ "$2" = 0 ] || [ -n "$FB_FAILED" ] || FB_FAILED=$1 ;; esac; }')
    result = ('fb_result() { fb_mark "$1" "$2"; if [ "$2" = 0 ]; then fb_post '
              '/v1/self/report "$1=ok"; else fb_post /v1/self/report '
              '"$1=failed:+exit+status+$2+(see+/var/log/cloud-init-output.log)"; fi; }')
    return (f"FB_REQUIRED={shlex.quote(' ' + ' '.join(required) + ' ')}; FB_FAILED=; "
            f"{post}; {mark}; {result}")


def _agent(base_url: str, token: str, sections: Sequence[str]) -> str:
    """Run Fleetboot's node agent for the sections cloud-init cannot apply.

    The agent reports each section itself; its results decide the required ones here.
    """
    env = (f"FLEETBOOT_URL={shlex.quote(base_url)} FLEETBOOT_TOKEN={shlex.quote(token)} "
           f"FLEETBOOT_SECTIONS={','.join(sections)}")
    get = _HTTP_GET.format(out="/run/fleetboot-client.sh",
                           url=shlex.quote(f"{base_url}/v1/self/client.sh"))
    results = "/run/fleetboot/config/results"
    check = (f"for s in {' '.join(sections)}; do grep -qx ok {results}/$s 2>/dev/null; "
             f'fb_mark "$s" $?; done')
    return (f"( {get} ) && {env} sh /run/fleetboot-client.sh fetch && "
            f"{env} sh /run/fleetboot-client.sh apply {' '.join(sections)}; {check}")


def _startup(doc: Mapping[str, Any]) -> str | None:
    startup = doc.get("startup")
    if not startup:
        return None
    cmd = str(startup["command"])
    user = str(startup.get("user", "root"))
    run = f"sh -c {shlex.quote(cmd)}" if user == "root" else \
        f"su -s /bin/sh {shlex.quote(user)} -c {shlex.quote(cmd)}"
    if startup.get("timeout_s"):
        run = f"timeout {int(startup['timeout_s'])} {run}"
    return _section_line("startup", [
        f"mkdir -p /var/log/fleetboot && {run} >/var/log/fleetboot/startup.log 2>&1"])


# The last line: UP, or FAILED naming the first required section that failed.
_FINAL_STATE = ('if [ -n "$FB_FAILED" ]; then fb_post /v1/self/state '
                '"state=FAILED&message=config/$FB_FAILED+failed"; '
                'else fb_post /v1/self/state state=UP; fi')


def user_data(doc: Mapping[str, Any], base_url: str, token: str) -> bytes:
    """``#cloud-config`` from the full document (the token was checked to get here)."""
    base_url = base_url.rstrip("/")
    config: dict[str, Any] = {"hostname": str(doc.get("hostname") or doc["node"]),
                              "fqdn": _fqdn(doc), "prefer_fqdn_over_hostname": False,
                              "manage_etc_hosts": False}
    if doc.get("accounts"):
        config["users"] = [_user(a) for a in doc["accounts"]]
    config["write_files"] = _write_files(doc)
    if doc.get("mounts"):
        # nofail: an unreachable server must not hold the boot (systemd waits otherwise)
        config["mounts"] = [[m["source"], m["target"], m.get("type", "nfs"),
                             f"{m.get('options', 'defaults')},nofail", "0", "0"]
                            for m in doc["mounts"]]
    runcmd = [_prologue(base_url, token, doc.get("required") or ())]
    runcmd += [_section_line(section, cmds) for section, cmds in _downloads(doc).items()]
    needs_agent = [s for s in AGENT_SECTIONS if doc.get(s)]
    if needs_agent:
        runcmd.append(_agent(base_url, token, needs_agent))
    startup = _startup(doc)
    if startup:
        runcmd.append(startup)
    runcmd.append(_FINAL_STATE)
    config["runcmd"] = runcmd
    return _dump(config, "#cloud-config\n")


def _v2_routes(routes: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for r in routes:
        dest = r.get("destination", "default")
        route: dict[str, Any] = {"to": "0.0.0.0/0" if dest == "default" else dest}
        if r.get("gateway"):
            route["via"] = r["gateway"]
        if r.get("metric") is not None:
            route["metric"] = r["metric"]
        out.append(route)
    return out


def network_config(doc: Mapping[str, Any]) -> bytes:
    """Netplan-style version 2: one ethernet per NIC, matched by MAC."""
    ethernets: dict[str, Any] = {}
    nics = list(doc.get("interfaces") or ())
    for i, nic in enumerate(nics):
        entry: dict[str, Any] = {}
        if nic.get("mac"):
            entry["match"] = {"macaddress": nic["mac"]}
        entry["dhcp4"] = bool(nic.get("dhcp", not nic.get("addresses")))
        if nic.get("addresses"):
            entry["addresses"] = list(nic["addresses"])
        if nic.get("mtu"):
            entry["mtu"] = nic["mtu"]
        routes = [r for r in nic.get("routes") or () if not entry["dhcp4"]]
        if routes:
            entry["routes"] = _v2_routes(routes)
        ethernets[nic.get("name") or f"nic{i}"] = entry
    # Static routes of the routes section go with the interface they name, else the boot NIC.
    for r in doc.get("routes") or ():
        key = r.get("interface") if r.get("interface") in ethernets else next(
            (k for k, n in zip(ethernets, nics, strict=True) if n.get("boot")),
            next(iter(ethernets), None))
        if key is not None:
            ethernets[key].setdefault("routes", []).extend(_v2_routes([r]))
    return _dump({"version": 2, "ethernets": ethernets})


def render(name: str, doc: Mapping[str, Any], base_url: str, token: str) -> bytes | None:
    """One NoCloud file by name, or None for a name NoCloud does not define."""
    if name == "meta-data":
        return meta_data(doc)
    if name == "user-data":
        return user_data(doc, base_url, token)
    if name == "network-config":
        return network_config(doc)
    if name == "vendor-data":
        return b""  # present and empty: cloud-init then does not log a missing file
    return None
