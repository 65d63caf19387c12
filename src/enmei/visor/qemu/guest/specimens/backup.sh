# Benign: a bursty backup job: every 8-22 s, 1 MiB written to the data disk and synced.
export PATH=/bin
while :; do
    sleep $((8 + RANDOM % 15))
    dd if=/dev/zero of=/data/backup.bin bs=64k count=16 conv=fsync 2>/dev/null
done
