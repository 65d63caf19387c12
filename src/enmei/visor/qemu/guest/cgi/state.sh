#!/bin/sh
# The guest's own view of itself, to tell a guest that ran on from one that booted again, and a cached
# file to time (the host cannot see inside the guest's page cache):
#   (no query)   boot_id=..., uptime_s=..., note=... (the note kept in RAM, /run/note)
#   note=TEXT    keep TEXT in RAM (lost by any reboot, kept by anything that keeps the guest running)
#   cache=MIB    write /data/cache.bin (MIB MiB of random bytes, synced)
#   read=1       read /data/cache.bin whole: read_ms=... (the guest's clock, 10 ms steps), bytes=...,
#                cache_grew_kib=... (what the read added to the page cache)
export PATH=/bin
printf 'Content-Type: text/plain\r\n\r\n'
knob="${QUERY_STRING%%=*}"
value="${QUERY_STRING#*=}"
case "$knob" in
    note)
        case "$value" in *[!A-Za-z0-9._-]*) echo "bad note"; exit 0 ;; esac
        echo "$value" > /run/note
        echo "ok note"
        ;;
    cache)
        case "$value" in ''|*[!0-9]*) echo "bad size"; exit 0 ;; esac
        dd if=/dev/urandom of=/data/cache.bin bs=1048576 count="$value" 2>/dev/null && sync
        echo "ok cache"
        ;;
    read)
        # dd to /dev/null: the read itself (no pipe, no counting), and how much the page cache grew by it
        # (about the file's size if it was not cached, about nothing if it was)
        c0=$(awk '/^Cached:/ {print $2}' /proc/meminfo)
        read -r t0 _ < /proc/uptime
        dd if=/data/cache.bin of=/dev/null bs=1048576 2>/dev/null
        read -r t1 _ < /proc/uptime
        c1=$(awk '/^Cached:/ {print $2}' /proc/meminfo)
        # uptime has two decimals: compare in hundredths
        a=$(echo "$t0" | tr -d .)
        b=$(echo "$t1" | tr -d .)
        echo "read_ms=$(( (b - a) * 10 )) bytes=$(stat -c %s /data/cache.bin 2>/dev/null || echo 0) cache_grew_kib=$((c1 - c0))"
        ;;
    *)
        read -r up _ < /proc/uptime
        echo "boot_id=$(cat /proc/sys/kernel/random/boot_id) uptime_s=$up note=$(cat /run/note 2>/dev/null)"
        ;;
esac
