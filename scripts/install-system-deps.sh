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
  wrk nginx-light nftables
  postgresql
  libvirt-clients libxml2-utils
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
