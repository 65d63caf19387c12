#!/bin/sh
# sysinit of the enmei demo guest (run by busybox init as PID 1's ::sysinit).
# Prints one marker line per boot phase on the serial console, in the form
#   enmei-phase: NAME t=UPTIME
# kernel -> userspace -> network -> service-ready (printed by gate.sh). The host watches for them.
# Kernel command-line knobs: enmei.noservice=1 (never start the service: a guest that never
# reaches service-ready), enmei.version=TEXT (the version string the service reports),
# enmei.ready_delay_s=N (wait N seconds before starting the service: a guest slow to get ready).
export PATH=/bin
mount -t proc proc /proc
phase() {
    read -r up _ < /proc/uptime
    echo "enmei-phase: $1 t=$up" > /dev/console
}
phase kernel
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/pts /dev/shm /run /tmp /data
mount -t tmpfs run /run
mount -t tmpfs tmp /tmp
while read -r mod; do
    insmod "/lib/modules/$mod" 2>/dev/console
done < /etc/enmei/modules
echo 1 > /proc/sys/kernel/sysrq
hostname enmei-guest
acpid -c /etc/acpi -l /dev/console
VERSION=$(cat /etc/enmei/version)
NOSERVICE=0
READY_DELAY=0
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        enmei.version=*) VERSION="${arg#enmei.version=}" ;;
        enmei.noservice=1) NOSERVICE=1 ;;
        enmei.ready_delay_s=*) READY_DELAY="${arg#enmei.ready_delay_s=}" ;;
    esac
done
echo "$VERSION" > /run/version
echo "enmei-demo $VERSION" > /www/version
phase userspace
ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
ip route add default via 10.0.2.2
phase network
if [ "$NOSERVICE" = 1 ]; then
    echo "enmei: service disabled by enmei.noservice=1" > /dev/console
    exit 0
fi
if [ "$READY_DELAY" != 0 ]; then
    echo "enmei: service start delayed by enmei.ready_delay_s=$READY_DELAY" > /dev/console
    sleep "$READY_DELAY"
fi
httpd -p 80 -h /www
i=0
until wget -q -O /dev/null http://127.0.0.1/cgi-bin/app 2>/dev/null; do
    i=$((i + 1))
    [ "$i" -gt 200 ] && break
    usleep 20000
done
/etc/enmei/keys.sh &
# The last phase is printed by gate.sh once it listens on ttyS1: from then on the guest is idle until
# the host opens the gate, which is where the host takes its phase snapshot.
exec /etc/enmei/gate.sh
