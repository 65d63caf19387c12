#!/bin/sh
# ACPI power button (busybox acpid, event PWRF/00000080): flush and release the data disk, then
# power off at once (the service keeps no other state worth a slower shutdown).
export PATH=/bin
echo "enmei: power button: powering off" > /dev/console
/etc/enmei/down.sh
poweroff -f
