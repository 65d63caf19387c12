#!/bin/sh
# Echo every line typed on the guest keyboard (tty1) to the serial console, so key injection
# through QMP send-key can be seen from outside: "enmei-keys: TEXT".
export PATH=/bin
exec < /dev/tty1
while read -r line; do
    echo "enmei-keys: $line" > /dev/console
done
