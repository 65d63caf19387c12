#!/bin/sh
# Network reach from inside the guest, to check the host's networking rule from the guest's side:
#   to=IP:PORT   try a TCP connection, send one line, answer "reached" or "blocked"
# (user-mode networking with restrict=on: only the guestfwd addresses are reachable)
export PATH=/bin
to="${QUERY_STRING#to=}"
ip="${to%:*}"
port="${to##*:}"
case "$ip:$port" in *[!0-9.:]*) printf 'Status: 400 Bad Request\r\n\r\n'; exit 0 ;; esac
printf 'Content-Type: text/plain\r\n\r\n'
if echo "hello from the guest" | timeout 3 nc "$ip" "$port" >/dev/null 2>&1; then
    echo reached
else
    echo blocked
fi
