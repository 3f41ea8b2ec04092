#!/usr/bin/env bash
# Installs the Debian packages Fleetboot's tests, benchmarks and demo use:
# real DHCP/TFTP/HTTP peers and clients, QEMU with iPXE and OVMF firmware,
# PostgreSQL, and libvirt's XML schemas. Idempotent; needs root.
set -euo pipefail
PKGS=(
  iproute2 iputils-ping procps psmisc kmod cpio
  qemu-system-x86 qemu-utils ipxe-qemu ipxe ovmf
  isc-dhcp-client busybox-static udhcpc
  kea-admin kea-dhcp4-server dnsmasq-base tftpd-hpa tftp-hpa atftp curl
  kea-dhcp6-server dhcpcd-base
  wrk nginx-light nftables
  postgresql
  libvirt-clients libxml2-utils libvirt-daemon libvirt-dev pkg-config
  openipmi ipmitool apache2-utils openssl
  debootstrap e2fsprogs wireguard-tools
  prometheus chromium chromium-driver
  shim-signed grub-efi-amd64-signed  # the Secure Boot chain (tests/firmware)
  qemu-system-arm qemu-efi-aarch64 grub-common  # ARM64 guests, grub-mkimage (tests/firmware)
  udpcast zstd syslinux syslinux-common mtools dosfstools iptables
)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  # Never start the packaged daemons: the tests start their own copies.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
  rm -f /usr/sbin/policy-rc.d
fi
# ARM64 lab guests (tests/firmware/test_arm64_vm.py) are built from Debian's arm64
# packages, downloaded with apt-get download (never installed): apt needs their lists.
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
  dpkg --add-architecture arm64
  apt-get update -qq
fi
