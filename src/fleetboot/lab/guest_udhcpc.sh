#!/bin/sh
# udhcpc event script of Fleetboot's lab initramfs: configures the lease,
# saves it for the hook (/run/fleetboot/lease.env) and reports it on the console.
case "$1" in
    deconfig)
        ip -4 addr flush dev "$interface"
        ip link set "$interface" up
        ;;
    bound | renew)
        # ifconfig takes the dotted netmask udhcpc always provides.
        ifconfig "$interface" "$ip" netmask "${subnet:-255.255.255.0}" ${broadcast:+broadcast "$broadcast"}
        gw=${router%% *}
        [ -n "$gw" ] && ip route replace default via "$gw" dev "$interface"
        : >/etc/resolv.conf
        for d in $dns; do echo "nameserver $d" >>/etc/resolv.conf; done
        [ -n "$hostname" ] && hostname "$hostname"
        mac=$(cat "/sys/class/net/$interface/address")
        cat >/run/fleetboot/lease.env <<EOF
FLEETBOOT_IP='$ip'
FLEETBOOT_SUBNET='$subnet'
FLEETBOOT_MAC='$mac'
FLEETBOOT_IFACE='$interface'
FLEETBOOT_ROUTER='$gw'
FLEETBOOT_DHCP_SERVER='$serverid'
FLEETBOOT_SIADDR='$siaddr'
FLEETBOOT_DNS='$dns'
FLEETBOOT_HOSTNAME='$hostname'
FLEETBOOT_DOMAIN='$domain'
EOF
        read -r up _ </proc/uptime
        echo "FLEETBOOT-LEASE $1 ip=$ip mask=$mask mac=$mac iface=$interface router=$gw server=$serverid hostname=$hostname uptime=$up"
        ;;
    leasefail | nak)
        echo "FLEETBOOT-DHCP $1 iface=$interface"
        ;;
esac
exit 0
