#!/bin/sh
# TEST IMAGES ONLY: a system binary tampered with on the data disk (issue 17), for VM Shadow's AIDE check:
# an "ls" in /data/bin that hides names starting with ".enmei-" (a wrapper, as a user-space rootkit's
# patched ls), and a file it hides. Harmless: nothing runs it.
export PATH=/bin
mkdir -p /data/bin
printf '#!/bin/sh\n/bin/busybox ls "$@" | /bin/busybox grep -v "^\\.enmei-"\n' > /data/bin/ls
chmod 755 /data/bin/ls
echo "stash" > /data/bin/.enmei-stash
sync
echo "enmei-specimen: tamper-bin wrote /data/bin/ls" > /dev/console
