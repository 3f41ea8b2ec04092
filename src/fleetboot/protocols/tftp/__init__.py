"""TFTP without I/O: the wire codec, option negotiation and the read-session state machine."""

from fleetboot.protocols.tftp.codec import ErrorCode, Opcode, TftpDecodeError, TftpError
from fleetboot.protocols.tftp.options import (
    Negotiated,
    OptionPolicy,
    TftpQuirk,
    blksize_for_mtu,
    negotiate,
    policy_for,
)
from fleetboot.protocols.tftp.session import Outcome, ReadSession, SessionStats, TimerPolicy

__all__ = [
    "ErrorCode",
    "Negotiated",
    "Opcode",
    "OptionPolicy",
    "Outcome",
    "ReadSession",
    "SessionStats",
    "TftpDecodeError",
    "TftpError",
    "TftpQuirk",
    "TimerPolicy",
    "blksize_for_mtu",
    "negotiate",
    "policy_for",
]
