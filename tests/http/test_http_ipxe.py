"""The iPXE script renderer (pure)."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from fleetboot.boot import ipxe
from fleetboot.boot.decision import BootDecision
from fleetboot.inventory.models import BootAction, BootProfile, ProfileKind

URLS = ipxe.Urls("http://10.9.0.1:8080")
WHO = ipxe.Who("n1", "52:54:00:00:00:01", "10.9.0.10")


def _kernel(**kw: object) -> ipxe.ProfileSpec:
    base: dict[str, object] = {"name": "deb", "kind": ProfileKind.KERNEL,
                               "kernel": "images/abc/vmlinuz", "initrd": "images/def/initrd.img",
                               "cmdline": "console=ttyS0"}
    base.update(kw)
    return ipxe.ProfileSpec(**base)  # type: ignore[arg-type]


def _commands(script: str) -> list[str]:
    return [line for line in script.splitlines() if line and not line.startswith("#")]


def test_kernel_profile_loads_kernel_initrd_and_cmdline_over_http() -> None:
    text = ipxe.render_profile(_kernel(), URLS, WHO, wait_seconds=7, extra_args="fb.token=xyz")
    assert text.startswith("#!ipxe\n")
    assert ("kernel http://10.9.0.1:8080/boot/files/images/abc/vmlinuz initrd=initrd "
            "console=ttyS0 fb.token=xyz || goto failed") in text
    assert "initrd --name initrd http://10.9.0.1:8080/boot/files/images/def/initrd.img" in text
    assert "boot || goto failed" in text
    # a failed boot sleeps and asks again, never strands the node at a prompt
    assert "sleep 7" in text
    assert "chain --replace --autofree http://10.9.0.1:8080/boot/script.ipxe" in text


def test_kernel_without_initrd_and_full_urls() -> None:
    text = ipxe.render_profile(_kernel(initrd=None, kernel="http://mirror/vmlinuz", cmdline=""),
                               URLS, WHO, wait_seconds=5)
    assert "kernel http://mirror/vmlinuz || goto failed" in text
    assert "initrd" not in "\n".join(_commands(text))


def test_paths_are_url_quoted() -> None:
    assert URLS.file("/images/a b/ker#nel") == \
        "http://10.9.0.1:8080/boot/files/images/a%20b/ker%23nel"


def test_local_boot_uses_sanboot_on_bios_and_exit_on_uefi() -> None:
    text = ipxe.render_local(WHO)
    cmds = _commands(text)
    assert "iseq ${platform} efi && goto local_efi ||" in cmds
    assert "sanboot --no-describe --drive 0x80 || goto local_failed" in cmds
    efi = cmds.index(":local_efi")
    assert cmds[efi + 1] == "exit 1"


def test_wait_sleeps_and_chains_the_script_again() -> None:
    text = ipxe.render_wait(URLS, WHO, wait_seconds=12)
    cmds = _commands(text)
    assert cmds[0] == ":wait" and "sleep 12" in cmds
    assert cmds[-1] == "chain --replace --autofree http://10.9.0.1:8080/boot/script.ipxe " \
                       "|| goto wait"


def test_decision_dispatch() -> None:
    prof = BootProfile(name="deb", kind=ProfileKind.KERNEL, kernel="k", initrd=None, cmdline="")
    for action, needle in ((BootAction.LOCAL, "sanboot"), (BootAction.WAIT, "sleep 3"),
                           (BootAction.PROFILE, "boot/files/k")):
        decision = BootDecision(action, prof if action is BootAction.PROFILE else None, "rule")
        assert needle in ipxe.render_decision(decision, URLS, WHO, wait_seconds=3)


def test_ipxe_script_profile_gets_hook_args_as_a_setting() -> None:
    spec = ipxe.ProfileSpec("custom", ProfileKind.IPXE, script="#!ipxe\necho hi\nboot\n")
    text = ipxe.render_profile(spec, URLS, WHO, wait_seconds=3, extra_args="tok=1")
    assert text == "#!ipxe\nset fleetboot-args tok=1\necho hi\nboot\n"
    plain = ipxe.ProfileSpec("custom", ProfileKind.IPXE, script="echo hi")
    assert ipxe.render_profile(plain, URLS, WHO, wait_seconds=3) == "#!ipxe\necho hi\n"


def test_menu_for_unknown_machines() -> None:
    who = ipxe.Who(None, "52:54:00:00:00:09", "10.9.0.99")
    text = ipxe.render_menu([_kernel(name="deb"), _kernel(name="rescue", initrd=None),
                             ipxe.ProfileSpec("s", ProfileKind.IPXE, script="x")],
                            URLS, who, wait_seconds=5, timeout_s=20, default="rescue")
    cmds = _commands(text)
    assert "item p0 deb" in cmds and "item p1 rescue" in cmds
    assert not any(c.startswith("item p2") for c in cmds)  # iPXE-script profiles are left out
    assert "choose --default p1 --timeout 20000 target && goto ${target} || goto wait" in cmds
    for label in (":p0", ":p1", ":local", ":wait", ":failed"):
        assert label in cmds
    assert "unknown machine 52:54:00:00:00:09" in text


def test_menu_default_falls_back_to_wait() -> None:
    who = ipxe.Who(None, None, "10.9.0.99")
    text = ipxe.render_menu([], URLS, who, wait_seconds=5, timeout_s=0, default="nope")
    assert "choose --default wait --timeout 0 target" in text


_LABEL = re.compile(r"^:[a-z0-9_]+$")
_KNOWN = ("echo ", "kernel ", "initrd ", "boot ", "sleep ", "chain ", "iseq ", "sanboot ",
          "exit ", "menu ", "item ", "choose ", ":")
_OURS = re.compile(r" (\|\| goto [a-z0-9_]+|&& goto (local_efi|\$\{target\}) \|\|"
                   r"( goto wait)?)$")


@given(cmdline=st.text(), extra=st.text(), name=st.text(min_size=1, max_size=40),
       words=st.lists(st.sampled_from(["||", "&&", ";", "x", "${a}"]), max_size=6))
def test_no_input_can_inject_a_command(cmdline: str, extra: str, name: str,
                                       words: list[str]) -> None:
    """Whatever a profile or hook contains, every line stays one command of ours."""
    spec = _kernel(name=name, cmdline=cmdline + " " + " ".join(words))
    for text in (ipxe.render_profile(spec, URLS, WHO, wait_seconds=3, extra_args=extra),
                 ipxe.render_menu([spec], URLS, ipxe.Who(None, None, "1.2.3.4"),
                                  wait_seconds=3, timeout_s=1)):
        for line in _commands(text):
            assert line.startswith(_KNOWN), line
            if line.startswith(":"):
                assert _LABEL.match(line), line
            body = _OURS.sub("", line)
            assert not set(body.split()) & {"||", "&&", ";"}, line


@given(st.text())
def test_one_line_has_no_control_characters(text: str) -> None:
    out = ipxe.one_line(text)
    assert not any(ord(c) < 0x20 or ord(c) == 0x7F for c in out)
    assert out == out.strip()
