"""The lease directory chain (DHCPv4 then DHCPv6) keeps each directory's identity checks."""

from __future__ import annotations

from fleetboot.identity.core import Verdict
from fleetboot.server.directory import DirectoryChain, StaticDirectory

A, B = "52:54:00:00:00:0a", "52:54:00:00:00:0b"


class Checked(StaticDirectory):
    """Like the DHCP service: an ``identify`` that refuses what the link contradicts."""

    def __init__(self, mapping: dict[str, str], refused: set[str]) -> None:
        super().__init__(mapping)
        self.refused = refused

    def identify(self, address: str, claimed: str | None = None) -> Verdict:
        if address in self.refused:
            return Verdict(None, "link differs")
        mac = self.mapping.get(address)
        return Verdict(mac, "lease") if mac else Verdict(None, "no lease")


def test_the_first_directory_that_binds_decides() -> None:
    chain = DirectoryChain(Checked({"10.0.0.5": A}, {"10.0.0.6"}),
                           StaticDirectory({"fd00::5": B, "10.0.0.6": B}))
    assert chain.identify("10.0.0.5").mac == A
    assert chain.identify("fd00::5").mac == B
    assert chain.identify("fd00::9").reason == "no lease"


def test_a_claimed_mac_must_match_a_plain_directorys_lease() -> None:
    chain = DirectoryChain(Checked({}, set()), StaticDirectory({"fd00::5": B}))
    assert chain.identify("fd00::5", claimed=B.upper()).mac == B
    refused = chain.identify("fd00::5", claimed=A)
    assert not refused.ok and refused.reason == "claim differs"
