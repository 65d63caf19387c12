#!/bin/sh
# TEST IMAGES ONLY: a process hidden by a kernel module (issue 17). A long sleep runs, and the test-only
# module cv_hide_task (kmod/cv_hide_task.c, built for this image's kernel) unlinks it from the kernel's
# task list. Harmless: it only sleeps. The pid is named on the console for the test.
export PATH=/bin
sleep 1000000 < /dev/null > /dev/null 2>&1 &
pid=$!
if err=$(insmod /etc/enmei/specimens/kmod/cv_hide_task.ko "pid=$pid" 2>&1); then
    echo "enmei-specimen: hide-task pid $pid" > /dev/console
else
    echo "enmei-specimen: hide-task failed: $err" > /dev/console
fi
