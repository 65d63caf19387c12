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
# Lowest priority from here on: after a phase reboot the service answers first, the mount (and the
# journal replay it may need) uses what CPU is left.
renice -n 19 -p $$ >/dev/null 2>&1
disk=$(findfs LABEL=enmei-data 2>/dev/null || echo /dev/vda)
# The kernel read the disk's first blocks at boot (partition scan), before the snapshot: forget every
# cached block of it, so the mount reads the disk as it is now, not as it was when the snapshot was
# taken (another QEMU of this unit may have written it since).
blockdev --flushbufs "$disk" 2>/dev/console
echo 3 > /proc/sys/vm/drop_caches
if mount -t ext4 -o commit=1 "$disk" /data 2>/dev/console; then
    read -r up _ < /proc/uptime
    echo "enmei-phase: data-ready t=$up" > /dev/console
else
    echo "enmei: data disk $disk did not mount" > /dev/console
fi
