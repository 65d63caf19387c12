#!/bin/sh
# The service's persistent data, on the data disk mounted at /data:
#   put=TEXT   append TEXT as one line and sync it to the disk
#   get        the lines stored so far
# Answers 503 while the data disk is not mounted (before the host opens the gate).
export PATH=/bin
if ! grep -q ' /data ' /proc/mounts; then
    printf 'Status: 503 Service Unavailable\r\nContent-Type: text/plain\r\n\r\nno data disk\n'
    exit 0
fi
case "$QUERY_STRING" in
    put=*)
        echo "${QUERY_STRING#put=}" >> /data/lines
        sync
        printf 'Content-Type: text/plain\r\n\r\nstored\n'
        ;;
    *)
        printf 'Content-Type: text/plain\r\n\r\n'
        cat /data/lines 2>/dev/null
        ;;
esac
