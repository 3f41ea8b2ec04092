#!/bin/sh
# The deploy agent of the reload ramdisk (busybox sh + zstd): run by the lab
# initramfs's /init after its DHCP lease. It fetches the image's index, then
# every chunk's zstd frame by HTTP Range (a dropped transfer costs that chunk
# only; a verified chunk is never fetched again), checks each chunk's SHA-256,
# writes it at each of its offsets on the target disk, then reads the disk back
# and compares the whole-disk checksum. Progress and the result go to the
# console as FLEETBOOT-DEPLOY lines (percent, verified, failed reason=...).
#   fleetboot.image=http://SERVER/boot/files/disks/ID   the image directory
#   fleetboot.target=/dev/vda                           the disk to write
export LD_LIBRARY_PATH=/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu
url=$FLEETBOOT_IMAGE
target=${FLEETBOOT_TARGET:-/dev/vda}

hostport=${url#http://}
hostport=${hostport%%/*}
path=/${url#http://*/}
host=${hostport%:*}
port=${hostport##*:}
[ "$port" = "$hostport" ] && port=80

mark() { echo "FLEETBOOT-DEPLOY $*"; }

# fetch_range FROM LENGTH OUT: those bytes of chunks.bin. busybox wget refuses
# a 206 it did not ask for with -c, so this speaks HTTP/1.1 through nc. nc's
# stdin stays open until the response has ended: a half-closed connection
# makes a server (nginx) drop the response it is still sending.
fetch_range() {
    rm -f /tmp/resp.done
    {
        printf 'GET %s/chunks.bin HTTP/1.1\r\nHost: %s\r\nRange: bytes=%s-%s\r\nConnection: close\r\n\r\n' \
            "$path" "$hostport" "$1" $(($1 + $2 - 1))
        n=0
        while [ ! -e /tmp/resp.done ] && [ $n -lt 600 ]; do n=$((n + 1)); usleep 50000; done
    } | { nc -w 30 "$host" "$port" >/tmp/resp; touch /tmp/resp.done; }
    head -n 1 /tmp/resp | grep -q " 206 " || return 1
    tail -c "$2" /tmp/resp >"$3"
}
fail() { mark "failed reason=$1"; exit 1; }

[ -n "$url" ] || fail no-image-url
n=0
while [ ! -b "$target" ] && [ $n -lt 100 ]; do n=$((n + 1)); usleep 100000; done
[ -b "$target" ] || fail "no-target-disk:$target"
wget -q -O /tmp/index "$url/index.txt" || fail index-fetch
read -r fmt size disksha total csize </tmp/index
[ "$fmt" = fleetboot-disk/1 ] || fail bad-index
have=$(blockdev --getsize64 "$target")
[ "$have" -ge "$size" ] || fail "disk-too-small:have=$have,need=$size"
mark "start chunks=$total size=$size target=$target"
tail -n +2 /tmp/index >/tmp/chunks
done=0
last=-1
while read -r poff plen sha len offsets; do
    tries=0
    until fetch_range "$poff" "$plen" /tmp/c.zst &&
        zstd -d -q -f /tmp/c.zst -o /tmp/c &&
        [ "$(sha256sum /tmp/c | cut -d' ' -f1)" = "$sha" ]; do
        tries=$((tries + 1))
        [ $tries -ge 5 ] && fail "chunk-verify:$offsets"
        mark "retry offsets=$offsets"
        sleep 1
    done
    for off in $(echo "$offsets" | tr , ' '); do
        dd if=/tmp/c of="$target" bs="$csize" seek=$((off / csize)) conv=notrunc 2>/dev/null ||
            fail "write:$off"
    done
    done=$((done + 1))
    pct=$((done * 100 / total))
    if [ $((pct / 10)) -ne $((last / 10)) ]; then mark "progress percent=$pct"; fi
    last=$pct
done </tmp/chunks
sync
got=$(head -c "$size" "$target" | sha256sum | cut -d' ' -f1)
[ "$got" = "$disksha" ] || fail "disk-checksum:$got"
mark "verified chunks=$done sha256=$got"
