#!/bin/sh
# TEST IMAGES ONLY: benign module churn (issue 17): the do-nothing module cv_benign loaded and unloaded
# over and over (every 0.3 s, at most 2000 times), so that modules come and go around the cross-view
# listings. Never to be accused.
export PATH=/bin
i=0
while [ "$i" -lt 2000 ]; do
    insmod /etc/enmei/specimens/kmod/cv_benign.ko 2>/dev/null
    sleep 0.3
    rmmod cv_benign 2>/dev/null
    sleep 0.3
    i=$((i + 1))
done
