"""Test-lab building blocks shared by tests, benchmarks and ``make demo``:
network namespaces, a throw-away PostgreSQL server, guest kernels and initramfs
images, and QEMU VMs that PXE-boot. Nothing here is used by the server itself."""
