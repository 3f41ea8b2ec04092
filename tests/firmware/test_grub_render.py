"""GRUB configurations rendered from a boot decision (issue 17, item 1): pure."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetboot.boot import grub
from fleetboot.boot.ipxe import ProfileSpec, Who
from fleetboot.inventory.models import BootAction, ProfileKind

PATHS = grub.GrubPaths("10.9.0.1")
WHO = Who("a", "52:54:00:00:0a:01", "10.9.0.11")
DEB = ProfileSpec("deb", ProfileKind.KERNEL, "images/k1/vmlinuz", "images/k1/initrd.img",
                  "console=ttyS0")


def test_a_profile_boots_kernel_and_initrd_over_tftp() -> None:
    text = grub.render_choice(BootAction.PROFILE, DEB, "node default", PATHS, WHO,
                              wait_seconds=7, extra_args="fleetboot.token=abc")
    assert text.startswith("# Fleetboot: node a (52:54:00:00:0a:01): profile deb")
    assert "linux '(tftp,10.9.0.1)/images/k1/vmlinuz' 'console=ttyS0' " \
           "'fleetboot.token=abc'\n" in text
    assert "initrd '(tftp,10.9.0.1)/images/k1/initrd.img'\nboot\n" in text
    # A failed boot waits and asks the server again instead of stopping at grub>.
    assert text.endswith('sleep 7\nconfigfile "$prefix/grub.cfg"\n')


def test_local_and_wait() -> None:
    local = grub.render_choice(BootAction.LOCAL, None, "node default", PATHS, WHO,
                               wait_seconds=5)
    assert "exit 1" in local and "linux" not in local
    wait = grub.render_choice(BootAction.WAIT, None, "temporary boot", PATHS, WHO,
                              wait_seconds=42)
    assert "sleep 42" in wait and "temporary boot" in wait and "configfile" in wait


def test_url_kernels_and_the_servers_own_device() -> None:
    prof = ProfileSpec("u", ProfileKind.KERNEL, "http://10.0.0.5:8080/k/vmlinuz")
    text = grub.render_profile(prof, grub.GrubPaths(None), WHO, wait_seconds=3)
    assert "linux '(http,10.0.0.5:8080)/k/vmlinuz'" in text
    text = grub.render_profile(DEB, grub.GrubPaths(None), WHO, wait_seconds=3)
    assert 'linux "($root)/images/k1/vmlinuz"' in text
    with pytest.raises(grub.ScriptError, match="GRUB cannot fetch"):
        grub.render_profile(ProfileSpec("f", ProfileKind.KERNEL, "ftp://x/k"), PATHS, WHO,
                            wait_seconds=3)


def test_an_ipxe_script_profile_is_refused_with_a_reason() -> None:
    prof = ProfileSpec("s", ProfileKind.IPXE, script="#!ipxe\nexit")
    with pytest.raises(grub.ScriptError, match="GRUB boots kernel profiles only"):
        grub.render_profile(prof, PATHS, WHO, wait_seconds=3)


@given(st.text(max_size=80), st.text(max_size=40))
def test_arguments_cannot_inject_commands(cmdline: str, name: str) -> None:
    """Whatever the profile says, each line is one command: a quoted word never
    ends early, so `;`, `$`, newlines and quotes in arguments stay arguments."""
    prof = ProfileSpec(name or "p", ProfileKind.KERNEL, "images/k", None, cmdline)
    text = grub.render_profile(prof, PATHS, WHO, wait_seconds=3, extra_args=cmdline)
    lines = text.rstrip("\n").split("\n")  # GRUB ends a command at a newline only
    assert [ln.split(" ", 1)[0] for ln in lines] == [
        "#", "set", "echo", "linux", "boot", "echo", "sleep", "configfile"]
    linux_words = _shell_words(lines[3])
    clean = re.sub(r"[\x00-\x1f\x7f]", " ", cmdline)  # control characters become spaces
    assert linux_words[2:] == (clean + " " + clean).split()  # each argument one word


def _shell_words(line: str) -> list[str]:
    import shlex  # GRUB's single quotes follow the shell's rules

    return shlex.split(line)


def test_quoting_round_trips_like_a_shell() -> None:
    for text in ("a b", "it's", "$x;y", "a\nb"):
        [word] = _shell_words(grub.quoted(text))
        assert word == text.replace("\n", " ")
