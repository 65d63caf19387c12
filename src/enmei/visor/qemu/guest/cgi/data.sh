#!/bin/sh
# The service's persistent data, on the data disk mounted at /data:
#   put=TEXT   append TEXT as one line and sync it to the disk
#   get        the lines stored so far
# Answers 503 while the data disk is not mounted (before the host opens the gate).
export PATH=/bin
# Work from inside the mounted disk: while this script's directory is on it, it cannot be unmounted
# (down.sh at power-off), so a line is never written to the RAM root under /data after the disk went
# (and acknowledged, then lost). The directory is the disk's if its device is not the root's.
if ! cd /data 2>/dev/null || [ "$(stat -c %d .)" = "$(stat -c %d /)" ]; then
    printf 'Status: 503 Service Unavailable\r\nContent-Type: text/plain\r\n\r\nno data disk\n'
    exit 0
fi
case "$QUERY_STRING" in
    put=*)
        echo "${QUERY_STRING#put=}" >> lines
        sync
        printf 'Content-Type: text/plain\r\n\r\nstored\n'
        ;;
    *)
        printf 'Content-Type: text/plain\r\n\r\n'
        cat lines 2>/dev/null
        ;;
esac
