"""DHCPv6 with boot files (RFC 8415, RFC 5970) and router advertisements. No I/O."""

from fleetboot.protocols.dhcp6.codec import Dhcp6DecodeError, Dhcp6Message, RelayMessage, decode
from fleetboot.protocols.dhcp6.engine import Dhcp6Engine, Reply6
from fleetboot.protocols.dhcp6.settings import Dhcp6Settings
from fleetboot.protocols.dhcp6.view import Dhcp6View, build_view6

__all__ = ["Dhcp6DecodeError", "Dhcp6Engine", "Dhcp6Message", "Dhcp6Settings", "Dhcp6View",
           "RelayMessage", "Reply6", "build_view6", "decode"]
