#!/bin/sh
# TEST IMAGES ONLY: a kernel module that hides itself from the module list (issue 17): cv_hide_self
# (kmod/cv_hide_self.c, built for this image's kernel) unlinks its own struct module at load, so
# /proc/modules and lsmod no longer show it. Harmless: it does nothing else.
export PATH=/bin
if err=$(insmod /etc/enmei/specimens/kmod/cv_hide_self.ko 2>&1); then
    echo "enmei-specimen: hide-module loaded" > /dev/console
else
    echo "enmei-specimen: hide-module failed: $err" > /dev/console
fi
