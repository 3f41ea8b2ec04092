#!/bin/sh
# fleetboot-client: the node side of Fleetboot's configuration service.
# POSIX sh for busybox (a stock initramfs has no Python): busybox wget (or curl),
# awk, sha256sum, base64. Shipped by Fleetboot at GET /v1/self/client.sh.
#
# One request per boot (seed 002: the testbed's nodes made 26): the whole
# configuration document is fetched once, cut into one file per section in a
# cache directory, and every later question is answered from that cache.
#
# Usage:
#   fleetboot-client.sh [boot]               fetch, apply every section, report each
#                                            section's result and UP (or FAILED when a
#                                            section listed in "required" failed)
#   fleetboot-client.sh fetch [--refresh]    fetch once per boot (--refresh: revalidate by ETag)
#   fleetboot-client.sh get SECTION [PATH]   a section as JSON, or one value (PATH like 0.path)
#   fleetboot-client.sh sections             the cached section names
#   fleetboot-client.sh apply [SECTION...]   apply sections from the cache (default: all)
#   fleetboot-client.sh import FILE          cache a document obtained another way
#   fleetboot-client.sh state STATE [MSG]    report a state (UP, FAILED, RELOADING, OFF, ...)
#
# Settings come from the environment, else from the kernel command line
# (fleetboot.url=, fleetboot.token=; the lab initramfs exports them as FLEETBOOT_*):
#   FLEETBOOT_URL    server base URL, e.g. http://10.0.0.1:8080
#   FLEETBOOT_TOKEN  the per-boot token (unlocks the secret sections; required to report)
#   FLEETBOOT_CACHE  cache directory (default /run/fleetboot/config)
#   FLEETBOOT_ROOT   prefix for the files written (default: none, i.e. /)
#   FLEETBOOT_BOOT_ID  what identifies this boot (default /proc/sys/kernel/random/boot_id)
#   FLEETBOOT_SECTIONS which sections "boot" and "apply" apply (default: all; comma-separated)
#   FLEETBOOT_MOUNT_TRIES, FLEETBOOT_MOUNT_TIMEOUT  tries per mount (3), seconds per try (15)
#
# Console lines "FLEETBOOT-CONFIG <event> key=value" and "FLEETBOOT-STATE <state>"
# report progress (fleetboot.lab.guest.parse_markers reads them).

set -u
umask 077

CACHE=${FLEETBOOT_CACHE:-/run/fleetboot/config}
ROOT=${FLEETBOOT_ROOT:-}
SECTIONS_DIR=$CACHE/sections
RESULTS=$CACHE/results
STATE_DIR=$ROOT/var/lib/fleetboot
LOG_DIR=$ROOT/var/log/fleetboot
MOUNT_TRIES=${FLEETBOOT_MOUNT_TRIES:-3}
MOUNT_TIMEOUT=${FLEETBOOT_MOUNT_TIMEOUT:-15}
# The sections the agent applies, in order (fleetboot.nodeconfig.sections.APPLIED).
APPLIED="hostname interfaces routes hosts accounts files mounts tunnels shaping tarballs packages startup"

say() { echo "FLEETBOOT-$*"; }
die() {
    echo "fleetboot-client: $*" >&2
    exit 1
}

cmdline_arg() {
    [ -r /proc/cmdline ] || return 0
    for arg in $(cat /proc/cmdline); do
        case "$arg" in "fleetboot.$1="*) echo "${arg#*=}" ;; esac
    done
}

settings() {
    URL=${FLEETBOOT_URL:-$(cmdline_arg url)}
    TOKEN=${FLEETBOOT_TOKEN:-$(cmdline_arg token)}
    URL=${URL%/}
    [ -n "$URL" ] || die "no server URL: set FLEETBOOT_URL or boot with fleetboot.url="
}

boot_id() {
    if [ -n "${FLEETBOOT_BOOT_ID:-}" ]; then
        echo "$FLEETBOOT_BOOT_ID"
    elif [ -r /proc/sys/kernel/random/boot_id ]; then
        cat /proc/sys/kernel/random/boot_id
    else
        echo unknown
    fi
}

# wget bounded in time. Not with -T: Debian's busybox is built without
# FEATURE_WGET_TIMEOUT and then crashes on -T; busybox wget alone waits 15 min.
wget_t() {
    secs=$1
    shift
    if command -v timeout >/dev/null 2>&1; then
        timeout "$secs" wget "$@"
    else
        wget "$@"
    fi
}

# wget (busybox's or GNU) where there is one, else curl (minimal Debian images have
# only curl). Both report the response headers on stderr the way "wget -S" does.
have_wget() { command -v wget >/dev/null 2>&1; }

# GET with the token header when there is a token. $1: output file, then optionally
# --header "If-None-Match: ...", then the URL. Fails on anything but a 2xx.
http_get() {
    out=$1
    shift
    if have_wget; then
        if [ -n "$TOKEN" ]; then
            wget_t 20 -q -S -O "$out" --header "X-Fleetboot-Token: $TOKEN" "$@"
        else
            wget_t 20 -q -S -O "$out" "$@"
        fi
        return
    fi
    c_extra=""
    [ "$1" = --header ] && { c_extra=$2; shift 2; }
    set -- -sS --max-time 20 -D - -o "$out" ${TOKEN:+-H "X-Fleetboot-Token: $TOKEN"} \
        ${c_extra:+-H "$c_extra"} "$1"
    c_head=$(curl "$@") || { printf '%s\n' "$c_head" >&2; return 1; }
    printf '%s\n' "$c_head" >&2
    case "$(printf '%s\n' "$c_head" | awk '$1 ~ /^HTTP\// { s = $2 } END { print s }')" in
        2??) return 0 ;;
        *) return 1 ;;
    esac
}

# download SECONDS OUT URL
download() {
    if have_wget; then
        wget_t "$1" -q -O "$2" "$3"
    else
        curl -fsS --max-time "$1" -o "$2" "$3"
    fi
}

# post_form PATH DATA: a form POST to the server with the token.
post_form() {
    if have_wget; then
        wget_t 20 -q -O /dev/null --header "X-Fleetboot-Token: $TOKEN" --post-data "$2" "$URL$1"
    else
        curl -fsS --max-time 20 -o /dev/null -H "X-Fleetboot-Token: $TOKEN" --data "$2" "$URL$1"
    fi
}

# Cut a JSON document into $SECTIONS_DIR/<key>.json (the raw value) and
# <key>.flat ("path<TAB>value" per scalar; strings unescaped except control
# characters, which stay escaped so every value is one line).
split_document() {
    awk -v dir="$SECTIONS_DIR" '
    function fail(m) { print "fleetboot-client: bad JSON: " m > "/dev/stderr"; bad = 1; exit 2 }
    function ws() { while (pos <= n && index(" \t\r\n", substr(s, pos, 1)) > 0) pos++ }
    function str(   out, c, rest) {
        pos++
        out = ""
        while (pos <= n) {
            rest = substr(s, pos, 256)
            if (match(rest, /^[^"\\]+/)) { out = out substr(rest, 1, RLENGTH); pos += RLENGTH; continue }
            c = substr(s, pos, 1)
            if (c == "\"") { pos++; return out }
            c = substr(s, pos + 1, 1)
            if (c == "u") { out = out "\\u" substr(s, pos + 2, 4); pos += 6; continue }
            if (c == "n" || c == "t" || c == "r" || c == "b" || c == "f") out = out "\\" c
            else out = out c
            pos += 2
        }
        fail("unterminated string")
    }
    function key(p, k) { return p == "" ? k : p "." k }
    function emit(p, v) { if (flat != "") print p "\t" v > flat }
    function value(p,   c, k, i) {
        ws()
        c = substr(s, pos, 1)
        if (c == "{") {
            pos++; ws()
            if (substr(s, pos, 1) == "}") { pos++; emit(p, "{}"); return }
            while (1) {
                ws()
                if (substr(s, pos, 1) != "\"") fail("a key expected at " pos)
                k = str(); ws()
                if (substr(s, pos, 1) != ":") fail("a colon expected at " pos)
                pos++
                value(key(p, k)); ws()
                c = substr(s, pos, 1); pos++
                if (c == "}") return
                if (c != ",") fail("a comma or } expected at " pos)
            }
        }
        if (c == "[") {
            pos++; ws()
            if (substr(s, pos, 1) == "]") { pos++; emit(p, "[]"); return }
            for (i = 0; ; i++) {
                value(key(p, i)); ws()
                c = substr(s, pos, 1); pos++
                if (c == "]") return
                if (c != ",") fail("a comma or ] expected at " pos)
            }
        }
        if (c == "\"") { emit(p, str()); return }
        if (match(substr(s, pos, 64), /^(true|false|null|-?[0-9][0-9.eE+-]*)/)) {
            emit(p, substr(s, pos, RLENGTH)); pos += RLENGTH; return
        }
        fail("a value expected at " pos)
    }
    { s = s $0 "\n" }
    END {
        n = length(s); pos = 1; ws()
        if (substr(s, pos, 1) != "{") fail("the document is not a JSON object")
        pos++
        while (1) {
            ws()
            if (substr(s, pos, 1) != "\"") fail("a section name expected at " pos)
            name = str(); ws()
            if (name !~ /^[a-z][a-z0-9_]*$/) fail("bad section name " name)
            if (substr(s, pos, 1) != ":") fail("a colon expected at " pos)
            pos++; ws()
            start = pos
            flat = dir "/" name ".flat"
            printf "" > flat
            value("")
            close(flat)
            raw = dir "/" name ".json"
            print substr(s, start, pos - start) > raw
            close(raw)
            count++
            ws(); c = substr(s, pos, 1); pos++
            if (c == "}") break
            if (c != ",") fail("a comma or } expected at " pos)
        }
        print count
    }'
}

fetch() {
    refresh=${1:-}
    settings
    id=$(boot_id)
    if [ -z "$refresh" ] && [ -f "$CACHE/document.json" ] &&
        [ "$(cat "$CACHE/boot_id" 2>/dev/null)" = "$id" ]; then
        return 0 # already fetched during this boot: the cache answers
    fi
    mkdir -p "$SECTIONS_DIR" || die "cannot create $CACHE"
    tmp=$CACHE/.document.$$
    hdrs=$CACHE/.headers.$$
    set -- "$URL/v1/self/config"
    if [ -n "$refresh" ] && [ -f "$CACHE/etag" ]; then
        set -- --header "If-None-Match: $(cat "$CACHE/etag")" "$@"
    fi
    tries=0
    until http_get "$tmp" "$@" 2>"$hdrs"; do
        if grep -q " 304 " "$hdrs"; then
            rm -f "$tmp" "$hdrs"
            echo "$id" >"$CACHE/boot_id"
            say "CONFIG unchanged etag=$(cat "$CACHE/etag")"
            return 0
        fi
        tries=$((tries + 1))
        if grep -q " 40[0-9] " "$hdrs" || [ $tries -ge 4 ]; then
            say "CONFIG fetch-failed url=$URL tries=$tries status=$(awk '$1 ~ /^HTTP\// { print $2 }' "$hdrs" | tail -n 1)"
            rm -f "$tmp" "$hdrs"
            return 1
        fi
        sleep $tries # 1, 2, 3 s: a busy server gets room, a node is not kept long
    done
    etag=$(awk 'tolower($1) == "etag:" { print $2 }' "$hdrs" | tr -d '\r' | tail -n 1)
    rm -f "$hdrs"
    store "$tmp" "$etag" "$id"
    rc=$?
    rm -f "$tmp"
    [ $rc -eq 0 ] || return 1
    say "CONFIG fetched bytes=$(wc -c <"$CACHE/document.json") sections=$count etag=$etag"
}

# Cache document $1 (ETag $2) for boot $3; sets $count to the number of sections.
store() {
    mkdir -p "$SECTIONS_DIR" || die "cannot create $CACHE"
    rm -f "$SECTIONS_DIR"/*.json "$SECTIONS_DIR"/*.flat "$CACHE/document.json"
    if ! count=$(split_document <"$1"); then
        say "CONFIG bad-document"
        return 1
    fi
    cp "$1" "$CACHE/.document.new" && mv "$CACHE/.document.new" "$CACHE/document.json"
    echo "$2" >"$CACHE/etag"
    echo "$3" >"$CACHE/boot_id"
}

# One value from the cache: get SECTION PATH (PATH "" for a scalar section).
value() {
    f=$SECTIONS_DIR/$1.flat
    [ -f "$f" ] || return 1
    awk -F '\t' -v k="$2" '$1 == k { sub(/^[^\t]*\t/, ""); print; found = 1; exit }
        END { exit found ? 0 : 1 }' "$f"
}

get() {
    [ $# -ge 1 ] || die "usage: get SECTION [PATH]"
    case "$1" in *[!a-z0-9_]* | "") die "bad section name: $1" ;; esac
    if [ ! -f "$SECTIONS_DIR/$1.json" ]; then
        [ -f "$CACHE/document.json" ] || die "nothing cached yet: run '$0 fetch' first"
        die "no section $1 in the cached document"
    fi
    if [ $# -ge 2 ]; then
        value "$1" "$2"
    else
        cat "$SECTIONS_DIR/$1.json"
    fi
}

# --- applying the sections ---------------------------------------------------------------
# One apply_<section> function per section, each idempotent: running it twice leaves the
# node as running it once does. On failure a function sets REASON (via fail) and returns 1.

fail() {
    REASON=$*
    return 1
}

# The indices of the list at PATH ("" for the section itself), e.g. "0 1 2".
indices() {
    f=$SECTIONS_DIR/$1.flat
    [ -f "$f" ] || return 0
    awk -F '\t' -v p="$2" '{
        k = $1
        if (p != "") { if (index(k, p ".") != 1) next; k = substr(k, length(p) + 2) }
        n = k; sub(/\..*/, "", n)
        if (n ~ /^[0-9]+$/ && !(n in seen)) { seen[n] = 1; print n }
    }' "$f"
}

# True when a section is absent, null or an empty list or object: nothing to apply.
empty() {
    f=$SECTIONS_DIR/$1.flat
    [ -f "$f" ] || return 0
    awk -F '\t' 'NR == 1 && $1 == "" && ($2 == "[]" || $2 == "{}" || $2 == "null" || $2 == "") { e = 1 }
        END { exit !(e && NR == 1) }' "$f"
}

# Run FUNC for every item of a list section; every item is tried, the failures collected.
each() {
    each_bad=""
    for each_n in $(indices "$1" ""); do
        REASON=""
        "$2" "$each_n" || each_bad="$each_bad${each_bad:+; }${REASON:-item $each_n failed}"
    done
    [ -z "$each_bad" ] || fail "$each_bad"
}

# Busybox's sh runs its own applets before looking at PATH, and busybox's ip and tc
# cannot make a vxlan or a netem qdisc: a full tool on PATH is called by its path.
full_tool() {
    ft_ifs=$IFS
    IFS=:
    set -- "$1" $PATH
    IFS=$ft_ifs
    ft_name=$1
    shift
    for d in "$@"; do
        [ -x "$d/$ft_name" ] || continue
        case "$(readlink "$d/$ft_name" 2>/dev/null)" in
            *busybox) ;;
            *) echo "$d/$ft_name" && return 0 ;;
        esac
    done
    echo "$ft_name"
}

nic_by_mac() {
    for d in /sys/class/net/*; do
        if [ "$(cat "$d/address" 2>/dev/null)" = "$1" ]; then
            echo "${d##*/}"
            return 0
        fi
    done
    return 1
}

# Run a command; on failure REASON is the command and its last line of output.
run() {
    run_out=$("$@" 2>&1) && return 0
    fail "$* failed: $(printf '%s' "$run_out" | tail -n 1)"
}

apply_hostname() {
    name=$(value hostname "") || return 0
    case "$name" in "" | null) return 0 ;; *[!A-Za-z0-9.-]*) fail "bad host name $name"; return 1 ;; esac
    run hostname "$name" || return 1
    mkdir -p "$ROOT/etc" && echo "$name" >"$ROOT/etc/hostname" && chmod 644 "$ROOT/etc/hostname"
    say "CONFIG hostname name=$name"
}

# One route: SECTION PATH [DEVICE]; "ip route replace" makes it idempotent.
add_route() {
    r_dest=$(value "$1" "$2.destination" || echo default)
    r_gw=$(value "$1" "$2.gateway" || true)
    r_dev=$(value "$1" "$2.interface" || echo "${3:-}")
    r_metric=$(value "$1" "$2.metric" || true)
    set -- "$r_dest"
    [ -n "$r_gw" ] && set -- "$@" via "$r_gw"
    [ -n "$r_dev" ] && set -- "$@" dev "$r_dev"
    [ -n "$r_metric" ] && set -- "$@" metric "$r_metric"
    run "$IP" route replace "$@"
}

interface_one() {
    i_mac=$(value interfaces "$1.mac" || true)
    i_dev=$(value interfaces "$1.name" || true)
    i_addrs=$(indices interfaces "$1.addresses")
    i_routes=$(indices interfaces "$1.routes")
    i_mtu=$(value interfaces "$1.mtu" || true)
    [ -n "$i_addrs$i_routes$i_mtu" ] || return 0 # DHCP only: the DHCP client's business
    if [ -n "$i_mac" ]; then
        i_dev=$(nic_by_mac "$i_mac") || { fail "no NIC with MAC $i_mac"; return 1; }
    elif [ ! -e "/sys/class/net/$i_dev" ]; then
        fail "no interface named $i_dev"
        return 1
    fi
    if [ -n "$i_mtu" ]; then run "$IP" link set dev "$i_dev" mtu "$i_mtu" || return 1; fi
    run "$IP" link set dev "$i_dev" up || return 1
    for a in $i_addrs; do
        run "$IP" addr replace "$(value interfaces "$1.addresses.$a")" dev "$i_dev" || return 1
    done
    for r in $i_routes; do
        add_route interfaces "$1.routes.$r" "$i_dev" || return 1
    done
    say "CONFIG interface dev=$i_dev mac=${i_mac:-none} addresses=$(echo $i_addrs | wc -w)"
}

apply_interfaces() { each interfaces interface_one; }

route_one() { add_route routes "$1"; }
apply_routes() { each routes route_one; }

# /etc/hosts keeps what others wrote; the block between the markers is ours.
apply_hosts() {
    h_file=$ROOT/etc/hosts
    mkdir -p "$ROOT/etc" || return 1
    h_tmp=$h_file.fleetboot.$$
    {
        if [ -f "$h_file" ]; then
            awk '/^# BEGIN fleetboot/ { skip = 1 } !skip { print } /^# END fleetboot/ { skip = 0 }' "$h_file"
        else
            printf '127.0.0.1\tlocalhost\n'
        fi
        echo "# BEGIN fleetboot (managed: replaced at every boot)"
        for n in $(indices hosts ""); do
            h_line=$(value hosts "$n.address") || continue
            for m in $(indices hosts "$n.names"); do
                h_line="$h_line $(value hosts "$n.names.$m")"
            done
            echo "$h_line"
        done
        echo "# END fleetboot"
    } >"$h_tmp" || { rm -f "$h_tmp"; fail "cannot write $h_file"; return 1; }
    chmod 644 "$h_tmp" && mv "$h_tmp" "$h_file"
}

# --- accounts: /etc/passwd, group and shadow edited in place (busybox and full systems alike)

# In file $1, replace the line whose first field is $2 with $3 (or append it); mode $4.
set_line() {
    [ -f "$1" ] || : >"$1"
    awk -F: -v k="$2" -v l="$3" '$1 == k { if (!done) print l; done = 1; next } { print }
        END { if (!done) print l }' "$1" >"$1.fleetboot.$$" &&
        chmod "$4" "$1.fleetboot.$$" && mv "$1.fleetboot.$$" "$1"
}

field_of() { awk -F: -v k="$2" -v n="$3" '$1 == k { print $n; exit }' "$1" 2>/dev/null; }
id_used() { awk -F: -v id="$2" '$3 == id { f = 1 } END { exit !f }' "$1" 2>/dev/null; }
free_id() {
    fid=1000
    while id_used "$1" $fid; do fid=$((fid + 1)); done
    echo $fid
}

# Make user $2 a member of group $1 (creating the group).
join_group() {
    g_gid=$(field_of "$ETC/group" "$1" 3)
    if [ -z "$g_gid" ]; then
        set_line "$ETC/group" "$1" "$1:x:$(free_id "$ETC/group"):$2" 644
        return
    fi
    g_members=$(field_of "$ETC/group" "$1" 4)
    case ",$g_members," in *",$2,"*) return 0 ;; esac
    set_line "$ETC/group" "$1" "$1:$(field_of "$ETC/group" "$1" 2):$g_gid:${g_members:+$g_members,}$2" 644
}

account_one() {
    user=$(value accounts "$1.name") || { fail "account $1 has no name"; return 1; }
    uid=$(value accounts "$1.uid" || field_of "$ETC/passwd" "$user" 3)
    [ -n "$uid" ] || uid=$(free_id "$ETC/passwd")
    gid=$(value accounts "$1.gid" || field_of "$ETC/group" "$user" 3)
    if [ -z "$gid" ]; then
        if id_used "$ETC/group" "$uid"; then gid=$(free_id "$ETC/group"); else gid=$uid; fi
    fi
    id_used "$ETC/group" "$gid" || set_line "$ETC/group" "$user" "$user:x:$gid:" 644
    home=$(value accounts "$1.home" || { [ "$user" = root ] && echo /root || echo "/home/$user"; })
    shell=$(value accounts "$1.shell" || echo /bin/sh)
    hash=$(value accounts "$1.password_hash" || echo '*') # '*': no password login, keys work
    set_line "$ETC/passwd" "$user" "$user:x:$uid:$gid:$user:$home:$shell" 644 || return 1
    set_line "$ETC/shadow" "$user" "$user:$hash:19000:0:99999:7:::" 600 || return 1
    for m in $(indices accounts "$1.groups"); do
        join_group "$(value accounts "$1.groups.$m")" "$user" || return 1
    done
    mkdir -p "$ROOT$home" && chown "$uid:$gid" "$ROOT$home" || { fail "cannot create $home"; return 1; }
    keys=$(indices accounts "$1.ssh_keys")
    if [ -n "$keys" ]; then
        mkdir -p "$ROOT$home/.ssh" && chmod 700 "$ROOT$home/.ssh" || return 1
        for k in $keys; do value accounts "$1.ssh_keys.$k"; done >"$ROOT$home/.ssh/authorized_keys" || return 1
        chmod 600 "$ROOT$home/.ssh/authorized_keys"
        chown -R "$uid:$gid" "$ROOT$home/.ssh"
    fi
    # sudo skips files in sudoers.d whose name holds a dot
    sudo_file=$ETC/sudoers.d/90-fleetboot-$(echo "$user" | tr . _)
    if [ "$(value accounts "$1.sudo" || echo false)" = true ]; then
        mkdir -p "$ETC/sudoers.d" && echo "$user ALL=(ALL) NOPASSWD:ALL" >"$sudo_file.tmp" &&
            chmod 440 "$sudo_file.tmp" && mv "$sudo_file.tmp" "$sudo_file" || { fail "cannot write $sudo_file"; return 1; }
    else
        rm -f "$sudo_file"
    fi
    say "CONFIG account user=$user uid=$uid gid=$gid keys=$(echo $keys | wc -w)"
}

apply_accounts() {
    ETC=$ROOT/etc
    mkdir -p "$ETC" || return 1
    [ -s "$ETC/passwd" ] || echo "root:x:0:0:root:/root:/bin/sh" >"$ETC/passwd"
    [ -s "$ETC/group" ] || echo "root:x:0:" >"$ETC/group"
    each accounts account_one
}

sha_ok() {
    [ -z "$2" ] && return 0
    [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]
}

file_one() {
    path=$(value files "$1.path") || return 1
    dest=$ROOT$path
    mkdir -p "$(dirname "$dest")" || { fail "cannot create the directory of $path"; return 1; }
    part=$dest.fleetboot.$$
    sum=$(value files "$1.sha256" || true)
    if b64=$(value files "$1.content_b64"); then
        printf '%s' "$b64" | base64 -d >"$part" || { fail "bad base64 for $path"; return 1; }
    else
        url=$(value files "$1.url") || return 1
        download 300 "$part" "$url" || { rm -f "$part"; fail "cannot download $url"; return 1; }
    fi
    if ! sha_ok "$part" "$sum"; then
        rm -f "$part"
        say "CONFIG file-bad-checksum path=$path"
        fail "checksum mismatch for $path"
        return 1
    fi
    chmod "$(value files "$1.mode" || echo 0644)" "$part"
    owner=$(value files "$1.owner" || true)
    [ -n "$owner" ] && chown "$owner" "$part"
    mv "$part" "$dest" || return 1
    say "CONFIG file path=$path bytes=$(wc -c <"$dest")"
}

apply_files() { each files file_one; }

# --- mounts: every try bounded by a timeout, a bounded number of tries: never a hung boot

mount_one() {
    m_src=$(value mounts "$1.source")
    m_tgt=$ROOT$(value mounts "$1.target")
    m_type=$(value mounts "$1.type" || echo nfs)
    m_opts=$(value mounts "$1.options" || echo defaults)
    if awk -v t="$m_tgt" '$2 == t { f = 1 } END { exit !f }' /proc/mounts; then
        return 0 # mounted already (a second run, or the image's fstab)
    fi
    mkdir -p "$m_tgt" || { fail "cannot create $m_tgt"; return 1; }
    try=1
    while :; do
        m_out=$(timeout -s KILL "$MOUNT_TIMEOUT" mount -t "$m_type" -o "$m_opts" "$m_src" "$m_tgt" 2>&1)
        m_rc=$?
        if [ $m_rc -eq 0 ]; then
            say "CONFIG mount target=$m_tgt type=$m_type tries=$try"
            return 0
        fi
        # 124 (coreutils) or 137 (busybox: killed): no answer within the bound
        [ $m_rc -eq 124 ] || [ $m_rc -eq 137 ] && m_out="no answer within ${MOUNT_TIMEOUT}s"
        [ $try -ge "$MOUNT_TRIES" ] && break
        sleep $try
        try=$((try + 1))
    done
    say "CONFIG mount-failed target=$m_tgt tries=$try"
    fail "mount $m_src on $m_tgt failed after $try tries of at most ${MOUNT_TIMEOUT}s: $(printf '%s' "$m_out" | tail -n 1)"
}

apply_mounts() { each mounts mount_one; }

# --- tunnels: deleted and created again, so changed parameters take effect

tunnel_one() {
    t_i=$1 # the positional parameters become the ip arguments below
    t_name=$(value tunnels "$t_i.name")
    t_type=$(value tunnels "$t_i.type" || echo gre)
    t_remote=$(value tunnels "$t_i.remote")
    t_local=$(value tunnels "$t_i.local" || true)
    t_key=$(value tunnels "$t_i.key" || true)
    t_port=$(value tunnels "$t_i.port" || true)
    case "$t_type" in
        gre | gretap | ipip)
            set -- type "$t_type" remote "$t_remote"
            [ -n "$t_local" ] && set -- "$@" local "$t_local"
            [ -n "$t_key" ] && [ "$t_type" != ipip ] && set -- "$@" key "$t_key"
            set -- "$@" ttl 64
            ;;
        vxlan)
            set -- type vxlan id "${t_key:-1}" remote "$t_remote" dstport "${t_port:-4789}"
            [ -n "$t_local" ] && set -- "$@" local "$t_local"
            ;;
        wireguard)
            command -v wg >/dev/null 2>&1 || { fail "tunnel $t_name: wireguard needs the wg tool (wireguard-tools)"; return 1; }
            set -- type wireguard
            ;;
        *) fail "tunnel $t_name: unknown type $t_type"; return 1 ;;
    esac
    "$IP" link del "$t_name" >/dev/null 2>&1
    run "$IP" link add "$t_name" "$@" || return 1
    if [ "$t_type" = wireguard ]; then
        t_keyfile=$CACHE/.wg-$t_name.key
        (umask 077 && printf '%s\n' "$t_key" >"$t_keyfile") || return 1
        run wg set "$t_name" private-key "$t_keyfile" listen-port "${t_port:-51820}" \
            peer "$(value tunnels "$t_i.peer_public_key")" endpoint "$t_remote:${t_port:-51820}" \
            allowed-ips 0.0.0.0/0
        t_rc=$?
        rm -f "$t_keyfile"
        [ $t_rc -eq 0 ] || return 1
    fi
    t_mtu=$(value tunnels "$t_i.mtu" || true)
    if [ -n "$t_mtu" ]; then run "$IP" link set dev "$t_name" mtu "$t_mtu" || return 1; fi
    t_addr=$(value tunnels "$t_i.address" || true)
    if [ -n "$t_addr" ]; then run "$IP" addr replace "$t_addr" dev "$t_name" || return 1; fi
    run "$IP" link set dev "$t_name" up || return 1
    say "CONFIG tunnel name=$t_name type=$t_type remote=$t_remote"
}

apply_tunnels() { each tunnels tunnel_one; }

# --- shaping: netem for delay and loss (with its own rate), tbf for a rate alone

nonzero() { case "$1" in "" | 0 | 0.0 | 0.00) return 1 ;; esac; }

shaping_one() {
    s_dev=$(value shaping "$1.interface")
    s_delay=$(value shaping "$1.delay_ms" || echo 0)
    s_jitter=$(value shaping "$1.jitter_ms" || echo 0)
    s_loss=$(value shaping "$1.loss_pct" || echo 0)
    s_rate=$(value shaping "$1.rate_kbit" || true)
    [ -e "/sys/class/net/$s_dev" ] || { fail "shaping: no interface named $s_dev"; return 1; }
    if nonzero "$s_delay" || nonzero "$s_loss"; then
        set -- netem delay "${s_delay}ms"
        nonzero "$s_jitter" && set -- "$@" "${s_jitter}ms"
        nonzero "$s_loss" && set -- "$@" loss "${s_loss}%"
        [ -n "$s_rate" ] && set -- "$@" rate "${s_rate}kbit"
    elif [ -n "$s_rate" ]; then
        s_burst=$((s_rate * 125 / 100)) # 10 ms at the rate, in bytes
        [ $s_burst -ge 4096 ] || s_burst=4096
        set -- tbf rate "${s_rate}kbit" burst "$s_burst" latency 400ms
    else
        "$TC" qdisc del dev "$s_dev" root >/dev/null 2>&1
        return 0
    fi
    run "$TC" qdisc replace dev "$s_dev" root "$@" || return 1
    say "CONFIG shaping dev=$s_dev qdisc=$1"
}

apply_shaping() { each shaping shaping_one; }

# --- tarballs and packages: downloaded over HTTP, checked by sha256, applied once each

fetch_checked() {
    if ! download 300 "$3" "$1" 2>/dev/null; then
        rm -f "$3"
        fail "cannot download $1"
        return 1
    fi
    f_sum=$(sha256sum "$3" | cut -d' ' -f1)
    if [ "$f_sum" != "$2" ]; then
        rm -f "$3"
        fail "checksum mismatch for $1: got $f_sum, want $2"
        return 1
    fi
}

# Unpack tarball $1 into $2. Busybox tar does not guess the compression: the magic does.
untar() {
    case "$(head -c 4 "$1" | od -An -tx1 | tr -d ' \n')" in
        1f8b*) u_flag=z ;;
        fd377a*) u_flag=J ;;
        425a68*) u_flag=j ;;
        *) u_flag= ;;
    esac
    run tar "-x${u_flag}f" "$1" -C "$2"
}

tarball_one() {
    tb_url=$(value tarballs "$1.url")
    tb_sum=$(value tarballs "$1.sha256")
    tb_dest=$ROOT$(value tarballs "$1.dest" || echo /)
    tb_done=$STATE_DIR/tarballs/$tb_sum
    [ -f "$tb_done" ] && return 0
    mkdir -p "$STATE_DIR/tarballs" "$tb_dest" || { fail "cannot create $tb_dest"; return 1; }
    tb_part=$STATE_DIR/tarballs/.part.$$
    fetch_checked "$tb_url" "$tb_sum" "$tb_part" || return 1
    untar "$tb_part" "$tb_dest"
    tb_rc=$?
    rm -f "$tb_part"
    [ $tb_rc -eq 0 ] || return 1
    echo "$tb_url" >"$tb_done"
    say "CONFIG tarball dest=$tb_dest sha256=$tb_sum"
}

apply_tarballs() { each tarballs tarball_one; }

package_one() {
    p_name=$(value packages "$1.name")
    p_url=$(value packages "$1.url")
    p_sum=$(value packages "$1.sha256")
    p_done=$STATE_DIR/packages/$p_sum
    [ -f "$p_done" ] && return 0
    case "$p_url" in
        *.deb) p_kind=deb ;;
        *.rpm) p_kind=rpm ;;
        *.tar | *.tar.gz | *.tgz | *.tar.xz | *.tar.bz2) p_kind=tar ;;
        *) fail "package $p_name: cannot tell the format of $p_url (.deb, .rpm or a tarball)"; return 1 ;;
    esac
    mkdir -p "$STATE_DIR/packages" || return 1
    p_file=$STATE_DIR/packages/.$p_name.$$.$p_kind
    fetch_checked "$p_url" "$p_sum" "$p_file" || return 1
    case "$p_kind" in
        deb)
            # busybox dpkg needs its database directory; a full system has it already
            mkdir -p "$ROOT/var/lib/dpkg/info" && { [ -f "$ROOT/var/lib/dpkg/status" ] || : >"$ROOT/var/lib/dpkg/status"; }
            run dpkg -i "$p_file"
            ;;
        rpm) run rpm -i "$p_file" ;;
        tar) untar "$p_file" "$ROOT/" ;;
    esac
    p_rc=$?
    rm -f "$p_file"
    [ $p_rc -eq 0 ] || { REASON="package $p_name: $REASON"; return 1; }
    echo "$p_url" >"$p_done"
    say "CONFIG package name=$p_name kind=$p_kind"
}

apply_packages() { each packages package_one; }

# --- startup: the command as its user, bounded by its timeout, output kept in the log

apply_startup() {
    st_cmd=$(value startup command) || return 0
    st_user=$(value startup user || echo root)
    st_timeout=$(value startup timeout_s || true)
    mkdir -p "$LOG_DIR" || return 1
    st_log=$LOG_DIR/startup.log
    if [ "$st_user" = root ]; then
        set -- sh -c "$st_cmd"
    else
        set -- su -s /bin/sh "$st_user" -c "$st_cmd"
    fi
    if [ -z "$st_timeout" ]; then # no bound given: it runs on, the boot does not wait
        nohup "$@" >"$st_log" 2>&1 </dev/null &
        say "CONFIG startup user=$st_user pid=$!"
        return 0
    fi
    timeout "$st_timeout" "$@" >"$st_log" 2>&1 </dev/null
    st_rc=$?
    echo "$st_rc" >"$LOG_DIR/startup.status"
    say "CONFIG startup user=$st_user rc=$st_rc"
    [ $st_rc -eq 0 ] || fail "the startup command exited with $st_rc (124 or 143: its ${st_timeout}s ran out); its output is in $st_log"
}

# --- running and reporting ---------------------------------------------------------------

apply_section() {
    REASON=""
    if "apply_$1"; then
        echo ok >"$RESULTS/$1"
        say "CONFIG section name=$1 result=ok"
    else
        echo "failed: ${REASON:-apply_$1 failed}" >"$RESULTS/$1"
        say "CONFIG section name=$1 result=failed"
        echo "fleetboot-client: $1: ${REASON:-failed}" >&2
    fi
}

# apply [SECTION...]: the sections named (default: $FLEETBOOT_SECTIONS, else all), in order.
apply() {
    [ -f "$CACHE/document.json" ] || die "nothing cached yet: run '$0 fetch' first"
    wanted=$(echo "${*:-${FLEETBOOT_SECTIONS:-$APPLIED}}" | tr ',' ' ')
    for w in $wanted; do
        case " $APPLIED " in *" $w "*) ;; *) die "cannot apply $w; sections applied: $APPLIED" ;; esac
    done
    mkdir -p "$RESULTS" || die "cannot create $RESULTS"
    rm -f "$RESULTS"/*
    umask 022 # what the sections create (homes, unpacked trees) is readable as usual
    IP=$(full_tool ip)
    TC=$(full_tool tc)
    for sec in $APPLIED; do # always in this order, whatever order they were named in
        case " $wanted " in *" $sec "*) ;; *) continue ;; esac
        empty "$sec" || apply_section "$sec"
    done
    ! grep -qv '^ok$' "$RESULTS"/* 2>/dev/null
}

# POST every result at once: "interfaces=ok&mounts=failed: why" (one request per boot).
report_results() {
    settings
    [ -n "$TOKEN" ] || return 0
    body=""
    for f in "$RESULTS"/*; do
        [ -f "$f" ] || continue
        body="$body${body:+&}${f##*/}=$(cut -c1-300 <"$f" | urlencode)"
    done
    [ -n "$body" ] || return 0
    post_form /v1/self/report "$body" || say "CONFIG report-failed=1"
}

# The first section that failed and is required, if any.
required_failure() {
    for r in $(indices required ""); do
        r_sec=$(value required "$r")
        if [ -f "$RESULTS/$r_sec" ] && ! grep -q '^ok$' "$RESULTS/$r_sec"; then
            echo "$r_sec"
            return 0
        fi
    done
    return 1
}

# stdin percent-encoded for a form body (a final newline dropped).
urlencode() {
    od -An -v -tx1 | awk 'BEGIN { for (i = 32; i < 127; i++) ch[sprintf("%02x", i)] = sprintf("%c", i) }
        { for (i = 1; i <= NF; i++) {
            c = ch[$i]
            if (c ~ /^[A-Za-z0-9._~-]$/) out = out c; else out = out "%" toupper($i)
        } }
        END { sub(/%0A$/, "", out); printf "%s", out }'
}

report() {
    settings
    [ -n "$TOKEN" ] || die "reporting a state needs the per-boot token (FLEETBOOT_TOKEN)"
    msg=$(printf '%s' "${2:-}" | cut -c1-500 | urlencode)
    if post_form /v1/self/state "state=$1&message=$msg"; then
        say "STATE $1"
    else
        say "STATE $1 report-failed=1"
        return 1
    fi
}

boot() {
    if ! fetch; then
        report FAILED "configuration fetch failed"
        return 1
    fi
    apply
    report_results
    if req=$(required_failure); then
        report FAILED "config/$req failed: $(sed 's/^failed: //' "$RESULTS/$req")"
        return 1
    fi
    report UP
}

cmd=${1:-boot}
[ $# -gt 0 ] && shift
case "$cmd" in
    boot) boot ;;
    fetch) fetch "$([ "${1:-}" = --refresh ] && echo refresh)" ;;
    get) get "$@" ;;
    sections) ls "$SECTIONS_DIR" 2>/dev/null | sed -n 's/\.json$//p' ;;
    apply)
        apply "$@"
        rc=$?
        report_results
        exit $rc
        ;;
    import)
        [ -f "${1:-}" ] || die "usage: import FILE"
        store "$1" "" "$(boot_id)" && say "CONFIG imported sections=$count"
        ;;
    state) [ $# -ge 1 ] || die "usage: state STATE [MESSAGE]"; report "$@" ;;
    *) die "unknown command $cmd; use boot, fetch, get, sections, apply, import or state" ;;
esac
