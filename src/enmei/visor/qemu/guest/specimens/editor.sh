# Benign: an editor that reads the keyboard (tty1) but saves only on an explicit ":w" line.
. /etc/enmei/specimens/lib.sh
take_tty
text=""
while IFS= read -r line; do
    echo "enmei-keys: $line" > /dev/console
    if [ "$line" = ":w" ]; then printf '%s\n' "$text" > /data/notes.txt; sync; else text="$text$line
"; fi
done
