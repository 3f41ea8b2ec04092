"""Who is asking: binds the TCP/UDP peer of a node-facing request to a node.

Every node-facing endpoint (``/boot/script.ipxe``, ``/boot/files``, TFTP,
``/v1/self/...``) asks one resolver (:class:`~fleetboot.identity.resolver.IdentityResolver`)
which MAC, and so which node, a peer address stands for. It weighs what the
server itself can see of the machine:

* the link-layer address the kernel's neighbour table holds for the peer on a
  serving interface (``neighbours.py``: one netlink get per request);
* in normal mode, Fleetboot's own current lease on that address;
* in proxy mode, the DHCP traffic seen on the link (``core.LinkBook``): the
  address a client asked for (option 50, ciaddr) and the site server's ACK;
* the MAC iPXE puts in the script URL (``?mac=${netX/mac}``), a claim only.

The decision itself is the pure :func:`~fleetboot.identity.core.decide`; see
``docs/design/node-identity.md`` for the threat model.
"""
