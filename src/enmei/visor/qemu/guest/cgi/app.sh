#!/bin/sh
# The demo service: answers its version string. Honors the fault knobs set by /cgi-bin/fault:
# /run/latency (milliseconds to wait before answering) and /run/hang (never answer).
[ -e /run/hang ] && exec sleep 100000
if [ -s /run/latency ]; then
    read -r ms < /run/latency
    usleep $((ms * 1000))
fi
printf 'Content-Type: text/plain\r\n\r\n'
echo "enmei-demo $(cat /run/version)"
