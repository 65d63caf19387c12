# Benign: a periodic logger, one line to /data/app.log every 2 s, synced.
export PATH=/bin
while sleep 2; do echo "$(cut -d' ' -f1 /proc/uptime) tick" >> /data/app.log; sync; done
