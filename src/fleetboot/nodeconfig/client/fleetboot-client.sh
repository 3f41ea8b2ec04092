#!/bin/sh
# fleetboot-client: the node side of Fleetboot's configuration service.
# POSIX sh for busybox (a stock initramfs has no Python): busybox wget, awk,
# sha256sum, base64. Shipped by Fleetboot at GET /v1/self/client.sh.
#
# One request per boot (seed 002: the testbed's nodes made 26): the whole
# configuration document is fetched once, cut into one file per section in a
# cache directory, and every later question is answered from that cache.
#
# Usage:
#   fleetboot-client.sh [boot]               fetch, apply hostname and files, report UP
#   fleetboot-client.sh fetch [--refresh]    fetch once per boot (--refresh: revalidate by ETag)
#   fleetboot-client.sh get SECTION [PATH]   a section as JSON, or one value (PATH like 0.path)
#   fleetboot-client.sh sections             the cached section names
#   fleetboot-client.sh apply                apply hostname and files from the cache
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
#
# Console lines "FLEETBOOT-CONFIG <event> key=value" and "FLEETBOOT-STATE <state>"
# report progress (fleetboot.lab.guest.parse_markers reads them).

set -u
umask 077

CACHE=${FLEETBOOT_CACHE:-/run/fleetboot/config}
ROOT=${FLEETBOOT_ROOT:-}
SECTIONS_DIR=$CACHE/sections

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

# GET with the token header when there is a token. $1: output file, rest: wget args.
http_get() {
    out=$1
    shift
    if [ -n "$TOKEN" ]; then
        wget_t 20 -q -S -O "$out" --header "X-Fleetboot-Token: $TOKEN" "$@"
    else
        wget_t 20 -q -S -O "$out" "$@"
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

apply_hostname() {
    name=$(value hostname "") || return 0
    case "$name" in "" | null | *[!A-Za-z0-9.-]*) return 0 ;; esac
    hostname "$name" || return 1
    mkdir -p "$ROOT/etc" && echo "$name" >"$ROOT/etc/hostname" && chmod 644 "$ROOT/etc/hostname"
    say "CONFIG hostname name=$name"
}

sha_ok() {
    [ -z "$2" ] && return 0
    [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]
}

apply_file() {
    path=$(value files "$1.path") || return 2
    dest=$ROOT$path
    mkdir -p "$(dirname "$dest")" || return 1
    part=$dest.fleetboot.$$
    sum=$(value files "$1.sha256" || true)
    if b64=$(value files "$1.content_b64"); then
        printf '%s' "$b64" | base64 -d >"$part" || return 1
    else
        url=$(value files "$1.url") || return 1
        wget_t 300 -q -O "$part" "$url" || { rm -f "$part"; return 1; }
    fi
    if ! sha_ok "$part" "$sum"; then
        rm -f "$part"
        say "CONFIG file-bad-checksum path=$path"
        return 1
    fi
    chmod "$(value files "$1.mode" || echo 0644)" "$part"
    owner=$(value files "$1.owner" || true)
    [ -n "$owner" ] && chown "$owner" "$part"
    mv "$part" "$dest" || return 1
    say "CONFIG file path=$path bytes=$(wc -c <"$dest")"
}

apply() {
    [ -f "$CACHE/document.json" ] || die "nothing cached yet: run '$0 fetch' first"
    failed=0
    apply_hostname || failed=1
    i=0
    while :; do
        apply_file $i
        rc=$?
        [ $rc -eq 2 ] && break
        [ $rc -ne 0 ] && failed=1
        i=$((i + 1))
    done
    return $failed
}

report() {
    settings
    [ -n "$TOKEN" ] || die "reporting a state needs the per-boot token (FLEETBOOT_TOKEN)"
    msg=$(printf '%s' "${2:-}" | tr -c 'A-Za-z0-9._~-' '+' | cut -c1-500)
    if wget_t 20 -q -O /dev/null --header "X-Fleetboot-Token: $TOKEN" \
        --post-data "state=$1&message=$msg" "$URL/v1/self/state"; then
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
    if ! apply; then
        report FAILED "applying the configuration failed"
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
    apply) apply ;;
    import)
        [ -f "${1:-}" ] || die "usage: import FILE"
        store "$1" "" "$(boot_id)" && say "CONFIG imported sections=$count"
        ;;
    state) [ $# -ge 1 ] || die "usage: state STATE [MESSAGE]"; report "$@" ;;
    *) die "unknown command $cmd; use boot, fetch, get, sections, apply, import or state" ;;
esac
