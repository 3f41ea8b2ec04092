"""Boot storms: N simulated machines PXE-booting at once, measured per phase.

The simulator speaks to a real server stack (Fleetboot, or the classic
dnsmasq + nginx set-up) over real packets between two network namespaces:

- ``plan``      who boots when, and how the simulated firmware behaves (pure)
- ``frames``    Ethernet/IPv4/UDP framing for the raw DHCP socket (pure)
- ``ipxe``      reading the iPXE script a node is given (pure)
- ``httpc``     a small HTTP/1.1 client that discards large bodies cheaply
- ``dhcpc``     the firmware's and the OS's DHCP clients (project DHCP codec)
- ``tftpc``     the firmware's TFTP client (project TFTP codec)
- ``node``      one node's boot sequence, phase by phase
- ``sim``       the simulator process, run inside the client namespace
- ``topology``  the namespaces and bridge both stacks run on
- ``stacks``    starting and stopping the server stacks under test
- ``stats``, ``report``  percentiles, the table, the picture, the RESULT line
- ``runner``    one storm against one stack, end to end
"""
