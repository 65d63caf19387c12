#!/bin/sh
# TEST IMAGES ONLY: the guest's own view of its processes (issue 17), printed on the serial console for
# the host's cross-view check, every enmei.psview=SECONDS (default 2). One listing is
#   enmei-ps: begin SEQ UPTIME
#   enmei-ps: PID COMM          (each process whose /proc/PID/stat this guest can read, as ps does)
#   enmei-ps: mod NAME          (each module of /proc/modules, as lsmod lists them)
#   enmei-ps: mods COUNT
#   enmei-ps: file PATH         (with enmei.fileview=DIR[,DIR...]: each entry the guest's ls -a gives)
#   enmei-ps: files COUNT
#   enmei-ps: end SEQ UPTIME
# written to the console in one go. It forks nothing per listing (shell builtins only), so that it adds
# no churn of its own.
export PATH=/bin
EVERY=2
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        enmei.psview=*) EVERY="${arg#enmei.psview=}" ;;
        enmei.fileview=*) FILES=$(echo "${arg#enmei.fileview=}" | tr ',' ' ') ;;
    esac
done
seq=0
nl='
'
while :; do
    seq=$((seq + 1))
    read -r up _ < /proc/uptime
    out="enmei-ps: begin $seq $up"
    for d in /proc/[0-9]*; do
        if read -r _ < "$d/stat" 2>/dev/null && read -r comm < "$d/comm" 2>/dev/null; then
            out="$out${nl}enmei-ps: ${d#/proc/} $comm"
        fi
    done
    n=0
    while read -r name _; do
        out="$out${nl}enmei-ps: mod $name"
        n=$((n + 1))
    done < /proc/modules
    out="$out${nl}enmei-ps: mods $n"
    if [ -n "$FILES" ]; then  # /bin/ls, not a glob nor the shell's own applet: what a patched ls says
        n=0
        for dir in $FILES; do
            for name in $(/bin/ls -a "$dir" 2>/dev/null); do
                case "$name" in .|..) continue ;; esac
                out="$out${nl}enmei-ps: file $dir/$name"
                n=$((n + 1))
            done
        done
        out="$out${nl}enmei-ps: files $n"
    fi
    read -r up _ < /proc/uptime
    printf '%s\nenmei-ps: end %s %s\n' "$out" "$seq" "$up" > /dev/console
    sleep "$EVERY"
done
