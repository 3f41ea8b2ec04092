"""KVM virtual machines whose whole PCI layout Fleetboot owns.

Layers, pure first:

- ``planner`` (slots, pools, the stored layout), ``qemu_argv`` (the command line
  and the QMP property dicts), ``drift`` (``query-pci`` against the layout),
  ``specs`` (user input), ``firmware`` (SeaBIOS or OVMF, where OVMF lives):
  values in, values out.
- ``runtime``: QEMU processes and QMP (hotplug steps with rollback, unplug,
  migration); ``net``: taps for bridge-backed NICs.
- ``service``: the operations ``fleetboot vm`` calls, keeping the inventory
  (``models``) consistent with the real QEMU process.
"""
