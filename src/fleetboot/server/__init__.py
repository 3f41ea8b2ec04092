"""The Fleetboot server process: one asyncio loop with DHCP, TFTP and HTTP."""
