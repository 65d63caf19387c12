#!/bin/sh
# The data-disk gate. The host takes its phase snapshot when it sees service-ready, and only then
# writes "go" to the second serial port (ttyS1, a unix socket on the host). Until then the data
# disk is never opened, so no snapshot holds any cached state of it; after a phase reboot the guest
# comes back here, waiting, and mounts the data disk as it is now. The same holds for a warm standby
# (a second QEMU resumed from that snapshot): its gate opens only once the failed QEMU is gone.
export PATH=/bin
stty -F /dev/ttyS1 raw -echo clocal 2>/dev/console
exec 3< /dev/ttyS1
read -r up _ < /proc/uptime
echo "enmei-phase: service-ready t=$up" > /dev/console
while read -r line <&3; do
    case "$line" in *go*) break ;; esac
done
exec 3<&-
# When the gate opened, in the guest's time: the host compares it with data-ready below to tell the
# guest's own mount time from a late knock (not a phase: nothing waits for it)
read -r up _ < /proc/uptime
echo "enmei-gate: open t=$up" > /dev/console
# Above the service (nice -10), this script and what it runs: a guest flooded with requests (a prober
# every 5 ms, each a forked httpd under TCG) leaves a mount at an equal or lower priority next to
# nothing. Before, the mount ran at the lowest priority for a second, then a watcher (itself starved,
# scanning /proc at nice 0) put it back to 0, missing grandchildren: after a swap the gate's steps took
# 1-15 s, sometimes more than 60 s. The service's first answers after a takeover come
# before the gate opens (the old QEMU is ended first, 0.1-0.2 s), so they are not held back by it.
renice -n -10 -p $$ >/dev/null 2>&1
disk=$(findfs LABEL=enmei-data 2>/dev/null || echo /dev/vda)
# The kernel read the disk's first blocks at boot (partition scan), before the snapshot: forget every
# cached block of it, so the mount reads the disk as it is now, not as it was when the snapshot was
# taken (another QEMU of this unit may have written it since). BLKFLSBUF drops the device's page cache,
# where those blocks are (nothing has it mounted or mapped, so every page of it goes). No drop_caches
# as well: the device's page cache is all that was cached of this disk, and drop_caches shrinks every
# cache of the guest, repeating while that frees anything (a guest forking a process per request keeps
# making more), work that only delays the mount.
blockdev --flushbufs "$disk" 2>/dev/console
read -r up _ < /proc/uptime
echo "enmei-gate: flushed t=$up" > /dev/console
if mount -t ext4 -o commit=1 "$disk" /data 2>/dev/console; then
    read -r up _ < /proc/uptime
    echo "enmei-phase: data-ready t=$up" > /dev/console
else
    echo "enmei: data disk $disk did not mount" > /dev/console
fi
