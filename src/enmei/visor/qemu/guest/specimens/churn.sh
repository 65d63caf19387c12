#!/bin/sh
# TEST IMAGES ONLY: benign process churn (issue 17), bounded: many short-lived processes (a few a tick,
# each living 0-0.3 s) and, every 20th round, a burst of 40 at once (a fork bomb bounded in count), for
# at most 3000 rounds. A cross-view check must not call any of them hidden.
export PATH=/bin
i=0
while [ "$i" -lt 3000 ]; do
    i=$((i + 1))
    true &
    sleep 0.1 &
    sleep 0.3 &
    if [ $((i % 20)) -eq 0 ]; then
        j=0
        while [ "$j" -lt 40 ]; do
            j=$((j + 1))
            sleep 0.2 &
        done
    fi
    wait
    usleep 50000
done
