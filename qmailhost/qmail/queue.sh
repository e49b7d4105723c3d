# qmail's queue, read-only: messages queued, those not yet preprocessed (todo), and the
# age in seconds of the oldest message (by the host's clock).
cd {{ qmail_home }}/queue || exit 1
now=$(date +%s)
todo=$(find todo -type f | wc -l)
find mess -type f {{ mtimes }} | sort -n \
  | awk -v now="$now" -v todo="$todo" 'NR == 1 { oldest = $1 } END { printf "%d %d %d\n", NR, todo, NR ? now - oldest : 0 }'
