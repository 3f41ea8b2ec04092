"""PCI passthrough: host device inventory from sysfs, flavors, claims, libvirt XML, migration.

Layers, pure first:

- ``pci``, ``sysfs`` (parsing), ``flavors``, ``placement``, ``libvirt_xml``: values in, values out.
- ``sysfs`` (reading), ``hosts``, ``catalog``, ``claims``, ``migration``, ``vmlayout``:
  the thin adapters that read files and the database.
"""
