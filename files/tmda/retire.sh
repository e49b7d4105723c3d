#!/bin/sh
# Retire TMDA: archive every piece a TMDA-era host still has, then remove it.
# The archive (/var/lib/qmailhost/tmda-archive/<UTC time>/) holds pieces.tar (owners,
# modes and content as they were) and MANIFEST (kind, path, sha256 of each file), so a
# rollback can put everything back. Mail and Maildirs are never touched: a .qmail file
# loses only its tmda-filter lines (delivery falls back to ./Maildir/ when none remain).
set -eu
pieces=$(sh "$(dirname "$0")/pieces.sh")
[ -n "$pieces" ] || exit 0
archive=/var/lib/qmailhost/tmda-archive/$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$archive" && chmod 700 /var/lib/qmailhost/tmda-archive "$archive"

# 1. Archive: the manifest, then a tar of every path (services: the directory they point at).
paths=""
echo "$pieces" | while IFS='	' read -r kind path; do
  case "$kind" in
    package|user|group) printf '%s\t%s\t-\n' "$kind" "$path" ;;
    *) { [ "$kind" = service ] && [ -L "$path" ] && echo "$path" && find "$(readlink -f "$path")" -xdev \
           -name supervise -prune -o \( -type f -o -type l \) -print; find "$path" -xdev \( -type f -o -type l \); } \
         2>/dev/null | sort -u | while read -r f; do
         if [ -f "$f" ] && [ ! -L "$f" ]; then sum=$(sha256sum < "$f" | cut -c1-64); else sum=link; fi
         printf '%s\t%s\t%s\n' "$kind" "$f" "$sum"
       done ;;
  esac
done > "$archive/MANIFEST"
excludes=""
for s in $(echo "$pieces" | awk -F'\t' '$1 == "service" {print $2}'); do
  [ -L "$s" ] || continue
  dir=$(readlink -f "$s"); paths="$paths $dir"
  excludes="$excludes --exclude=${dir#/}/supervise --exclude=${dir#/}/log/supervise"
done
paths="$paths $(echo "$pieces" | awk -F'\t' '$1 !~ /^(package|user|group)$/ {print $2}')"
grep -E '^(tofmipd):' /etc/passwd /etc/group > "$archive/accounts" 2>/dev/null || true
# shellcheck disable=SC2086
tar -C / $excludes -cpf "$archive/pieces.tar.new" $(for p in $paths; do [ -e "$p" ] && echo "${p#/}"; done)
mv "$archive/pieces.tar.new" "$archive/pieces.tar"

# 2. Remove, services first so nothing of TMDA runs.
echo "$pieces" | while IFS='	' read -r kind path; do
  case "$kind" in
    service)
      dir=$(readlink -f "$path" || echo "$path"); rm -f "$path"
      svc -dx "$dir" "$dir/log" 2>/dev/null || true
      for i in $(seq 50); do svok "$dir" 2>/dev/null || svok "$dir/log" 2>/dev/null || break; sleep 0.2; done
      if [ "$dir" != "$path" ]; then rm -rf "$dir"; fi ;;
    initscript)
      "$path" stop >/dev/null 2>&1 || true
      update-rc.d -f "$(basename "$path")" remove >/dev/null 2>&1 || true
      rm -f "$path" ;;
    stunnel)
      # Drop the stanzas that connect to 8025; keep the rest of the file.
      awk 'function flush() { if (!drop) printf "%s", buf; buf = ""; drop = 0 }
           /^[[:space:]]*\[/ { flush() }
           /^[[:space:]]*connect[[:space:]]*=[[:space:]]*((127\.0\.0\.1|localhost):)?8025[[:space:]]*$/ { drop = 1 }
           { buf = buf $0 "\n" } END { flush() }' "$path" > "$path.qmailhost-new"
      if grep -q '^[[:space:]]*\[' "$path.qmailhost-new"; then mv -f "$path.qmailhost-new" "$path"
      else rm -f "$path.qmailhost-new" "$path"; fi
      for pid in $(pgrep -f "stunnel.* $path\$" || true); do kill "$pid" 2>/dev/null || true; done ;;
    dotqmail)
      grep -v 'tmda-filter' "$path" > "$path.qmailhost-new" || true
      if [ -s "$path.qmailhost-new" ]; then
        chown --reference="$path" "$path.qmailhost-new"; chmod --reference="$path" "$path.qmailhost-new"
        mv -f "$path.qmailhost-new" "$path"
      else rm -f "$path.qmailhost-new" "$path"; fi ;;
    tmdarc|userdir|program) rm -rf "$path" ;;
    package) DEBIAN_FRONTEND=noninteractive apt-get remove -y -q tmda >/dev/null ;;
    user) userdel tofmipd ;;
    group) getent group tofmipd >/dev/null && groupdel tofmipd || true ;;
  esac
done
echo "TMDA retired; archived in $archive"
