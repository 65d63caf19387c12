#!/bin/sh
# Fault knobs of the demo service (query string, one knob per request):
#   leak=MIB      keep MIB more of guest memory busy (a file in RAM), cumulative
#   latency=MS    every answer of /cgi-bin/app waits MS milliseconds first
#   hang=1        /cgi-bin/app never answers again
#   panic=1       kernel panic now (sysrq 'c'); no answer is sent
#   reset=1       clear latency, hang and leaks
export PATH=/bin
knob="${QUERY_STRING%%=*}"
value="${QUERY_STRING#*=}"
case "$value" in *[!0-9]*) value=0 ;; esac
case "$knob" in
    panic) echo c > /proc/sysrq-trigger ;;
    leak) dd if=/dev/zero of="/run/leak.$$" bs=1048576 count="$value" 2>/dev/null ;;
    latency) echo "$value" > /run/latency ;;
    hang) touch /run/hang ;;
    reset) rm -f /run/latency /run/hang /run/leak.* ;;
    *) printf 'Status: 400 Bad Request\r\nContent-Type: text/plain\r\n\r\nunknown knob\n'; exit 0 ;;
esac
printf 'Content-Type: text/plain\r\n\r\nok %s\n' "$knob"
