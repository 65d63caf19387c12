#!/bin/sh
# ::shutdown of busybox init: flush and release the data disk before the power goes.
export PATH=/bin
sync
umount /data 2>/dev/null
echo "enmei-phase: shutdown" > /dev/console
