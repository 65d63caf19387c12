#!/bin/sh
# TEST IMAGES ONLY (enmei image build --specimens): harmless stand-ins for malware and for benign
# workloads, for enmei's keylogger and bot detection (issue 16). Nothing runs unless the kernel command
# line names it: enmei.specimen=NAME[,NAME...] (the scripts beside this one), enmei.sink=PORT (the
# port of the host's sink at 10.0.2.100, a guestfwd; default 7777). Run by init once the data disk is up.
export PATH=/bin
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        enmei.specimen=*) LIST="${arg#enmei.specimen=}" ;;
        enmei.sink=*) echo "${arg#enmei.sink=}" > /run/enmei-sink ;;
    esac
done
[ -n "$LIST" ] || exit 0
for name in $(echo "$LIST" | tr ',' ' '); do
    script="/etc/enmei/specimens/$name.sh"
    if [ -f "$script" ] && [ "$name" != start ] && [ "$name" != lib ]; then
        echo "enmei-specimen: $name started" > /dev/console
        setsid /bin/sh "$script" < /dev/null > /dev/null 2>&1 &
    else
        echo "enmei-specimen: no specimen $name" > /dev/console
    fi
done
