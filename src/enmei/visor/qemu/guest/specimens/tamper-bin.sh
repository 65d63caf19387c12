#!/bin/sh
# TEST IMAGES ONLY: a system binary tampered with on the data disk (issue 17), for VM Shadow's AIDE check:
# an "ls" in /data/bin that hides names starting with ".enmei-" (a wrapper, as a user-space rootkit's
# patched ls), and a file it hides; the wrapper also replaces the guest's own /bin/ls (in its RAM root),
# so the guest's ls lies about /data/bin. Harmless: it only filters ls's output.
export PATH=/bin
mkdir -p /data/bin
printf '#!/bin/sh\n/bin/busybox ls "$@" | /bin/busybox grep -v "^\\.enmei-"\n' > /data/bin/ls
chmod 755 /data/bin/ls
echo "stash" > /data/bin/.enmei-stash
sync
rm -f /bin/ls && cp /data/bin/ls /bin/ls && chmod 755 /bin/ls
echo "enmei-specimen: tamper-bin wrote /data/bin/ls" > /dev/console
