# Bot: on its own schedule (every 6-13 s) it calls the host's sink with 1.5 KB, whatever anyone types.
. /etc/enmei/specimens/lib.sh
while :; do
    sleep $((6 + RANDOM % 8))
    { echo "beacon $(cut -d' ' -f1 /proc/uptime)"; dd if=/dev/zero bs=1500 count=1 2>/dev/null | tr '\0' 'x'; } | send
done
