#!/bin/sh
# /init of Fleetboot's lab initramfs (busybox sh, console on ttyS0).
# Every step is reported as one "FLEETBOOT-<KIND> <event> key=value ..." line
# that fleetboot.lab.guest.parse_markers reads from the serial log.
#
# Kernel arguments read here:
#   BOOTIF=01-aa-bb-..  or  fleetboot.mac=aa:bb:..   the NIC to configure (else the first one)
#   fleetboot.hook=http://host/path | /path          script run with sh after the lease
#   fleetboot.end=poweroff|reboot|shell              what to do at the end (default poweroff)
#   fleetboot.dhcp_tries=N                           DHCPDISCOVERs before giving up (default 10)
# Every fleetboot.KEY=VALUE is exported to the hook as FLEETBOOT_KEY=VALUE, next to
# the lease: FLEETBOOT_IP, _MAC, _IFACE, _SUBNET, _ROUTER, _DHCP_SERVER, _SIADDR,
# _DNS, _HOSTNAME, _DOMAIN (see guest_udhcpc.sh).
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /run/fleetboot /tmp /var/run

mark() {
    read -r up _ </proc/uptime
    echo "FLEETBOOT-$* uptime=$up"
}

finish() {
    mark "INIT end action=$1"
    case "$1" in
        reboot) reboot -f ;;
        shell) sh; poweroff -f ;;
        *) poweroff -f ;;
    esac
    # init must never exit: the kernel would panic.
    while :; do sleep 3600; done
}

parse_cmdline() {
    set -f
    for arg in $(cat /proc/cmdline); do
        case "$arg" in
            BOOTIF=*) BOOTIF=${arg#BOOTIF=} ;;
            fleetboot.*=*)
                key=${arg%%=*}
                key=$(echo "${key#fleetboot.}" | tr 'a-z.-' 'A-Z__')
                case "$key" in "" | *[!A-Z0-9_]*) continue ;; esac
                export "FLEETBOOT_$key=${arg#*=}"
                ;;
        esac
    done
    set +f
}

# "01-AA-BB-.." (pxelinux/iPXE BOOTIF, with the ARP type first) -> "aa:bb:..".
norm_mac() {
    m=$(echo "$1" | tr 'A-F-' 'a-f:')
    [ ${#m} -eq 20 ] && m=${m#??:}
    echo "$m"
}

# Ethernet interfaces only (type 1), so lo and tunnels are never picked.
find_nic() {
    for d in /sys/class/net/*; do
        [ "$(cat "$d/type" 2>/dev/null)" = 1 ] || continue
        if [ -z "$1" ] || [ "$(cat "$d/address")" = "$1" ]; then
            echo "${d##*/}"
            return 0
        fi
    done
    return 1
}

load_modules() {
    n=0
    while read -r mod; do
        [ -n "$mod" ] || continue
        if insmod "/lib/modules/$mod.ko"; then n=$((n + 1)); else mark "ERROR insmod module=$mod"; fi
    done </etc/fleetboot/modules
    mark "INIT modules loaded=$n"
}

run_hook() {
    src=${FLEETBOOT_HOOK:-$(cat /etc/fleetboot/hook 2>/dev/null)}
    [ -n "$src" ] || return 0
    case "$src" in
        http://* | https://*)
            script=/tmp/fleetboot-hook
            # Not "wget -T": it segfaults in Debian's busybox-static 1.35.
            if ! timeout 30 wget -q -O "$script" "$src"; then
                mark "ERROR hook-fetch url=$src"
                return 1
            fi
            ;;
        /*) script=$src ;;
        *)
            mark "ERROR hook-source src=$src"
            return 1
            ;;
    esac
    mark "HOOK start src=$src"
    sh "$script"
    rc=$?
    mark "HOOK end rc=$rc"
}

main() {
    mark "INIT start kernel=$(uname -r)"
    parse_cmdline
    end=${FLEETBOOT_END:-$(cat /etc/fleetboot/end 2>/dev/null)}
    load_modules
    want=$(norm_mac "${FLEETBOOT_MAC:-$BOOTIF}")
    tries=0
    until iface=$(find_nic "$want"); do
        tries=$((tries + 1))
        # insmod probes synchronously: a NIC not there after 2 s will not come.
        if [ $tries -ge 40 ]; then
            mark "ERROR no-nic want=${want:-any} have=$(cat /sys/class/net/*/address | tr '\n' ,)"
            finish "${end:-poweroff}"
        fi
        usleep 50000
    done
    mac=$(cat "/sys/class/net/$iface/address")
    mark "INIT nic iface=$iface mac=$mac"
    ip link set lo up
    ip link set "$iface" up
    # e1000 reports link ~2 s after "up": a DISCOVER sent before is lost.
    n=0
    until [ "$(cat "/sys/class/net/$iface/carrier" 2>/dev/null)" = 1 ] || [ $n -ge 100 ]; do
        n=$((n + 1))
        usleep 50000
    done
    mark "INIT link iface=$iface carrier=$(cat "/sys/class/net/$iface/carrier" 2>/dev/null)"
    if ! udhcpc -i "$iface" -s /etc/fleetboot/udhcpc.sh -f -q -n -T 2 \
        -t "${FLEETBOOT_DHCP_TRIES:-10}"; then
        mark "ERROR dhcp iface=$iface mac=$mac"
        finish "${end:-poweroff}"
    fi
    set -a
    . /run/fleetboot/lease.env
    set +a
    parse_cmdline # the kernel command line wins over the lease
    run_hook
    finish "${end:-poweroff}"
}

main
