#!/bin/sh
# TEST IMAGES ONLY: a process hidden in user space (issue 17). A long sleep runs, and an empty directory
# is bind-mounted over its /proc/PID: ps, top and the guest's psview no longer see it (its stat and comm
# are gone), while the kernel still runs it. Harmless: it only sleeps.
export PATH=/bin
sleep 1000000 < /dev/null > /dev/null 2>&1 &
pid=$!
mkdir -p /run/.hide
mount --bind /run/.hide "/proc/$pid"
echo "enmei-specimen: hide-bind pid $pid" > /dev/console
