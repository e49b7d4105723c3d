#!/bin/sh
# Retire TMDA on NetBSD: archive every piece a TMDA-era host still has, then remove it.
# The archive (/var/lib/qmailhost/tmda-archive/<UTC time>/) holds pieces.tar (owners,
# modes and content as they were), MANIFEST (kind, path, sha256 of each file) and the
# tofmipd account lines, so submission mode "tmda" can put the configuration back.
# Mail and Maildirs are never touched: a .qmail file loses only its tmda-filter lines.
set -eu
pieces=$(sh "$(dirname "$0")/netbsd-pieces.sh")
[ -n "$pieces" ] || exit 0
archive=/var/lib/qmailhost/tmda-archive/$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$archive" && chmod 700 /var/lib/qmailhost/tmda-archive "$archive"

# 1. Archive: the manifest, then a tar of every path.
echo "$pieces" | while IFS='	' read -r kind path; do
  case "$kind" in
    package|user|group) printf '%s\t%s\t-\n' "$kind" "$path" ;;
    *) find "$path" \( -type f -o -type l \) 2>/dev/null | sort | while read -r f; do
         if [ -f "$f" ] && [ ! -L "$f" ]; then sum=$(openssl dgst -sha256 -r < "$f" | cut -c1-64); else sum=link; fi
         printf '%s\t%s\t%s\n' "$kind" "$f" "$sum"
       done ;;
  esac
done > "$archive/MANIFEST"
grep -E '^tofmipd:' /etc/master.passwd /etc/group > "$archive/accounts" 2>/dev/null || true
paths=$(echo "$pieces" | awk -F'\t' '$1 !~ /^(package|user|group)$/ {print $2}')
# shellcheck disable=SC2086
tar -C / -cpf "$archive/pieces.tar.new" $(for p in $paths; do [ -e "$p" ] && echo "${p#/}"; done)
mv "$archive/pieces.tar.new" "$archive/pieces.tar"

# 2. Remove, the service first so nothing of TMDA runs.
echo "$pieces" | while IFS='	' read -r kind path; do
  case "$kind" in
    rcscript) "$path" onestop >/dev/null 2>&1 || true; rm -f "$path" ;;
    rcconf) rm -f "$path" ;;
    stunnel)
      # Drop the stanzas that connect to 8025; keep the rest of the file.
      awk 'function flush() { if (!drop) printf "%s", buf; buf = ""; drop = 0 }
           /^[[:space:]]*\[/ { flush() }
           /^[[:space:]]*connect[[:space:]]*=[[:space:]]*((127\.0\.0\.1|localhost):)?8025[[:space:]]*$/ { drop = 1 }
           { buf = buf $0 "\n" } END { flush() }' "$path" > "$path.qmailhost-new"
      if grep -q '^[[:space:]]*\[' "$path.qmailhost-new"; then mv -f "$path.qmailhost-new" "$path"
      else rm -f "$path.qmailhost-new" "$path"; fi ;;
    dotqmail)
      grep -v 'tmda-filter' "$path" > "$path.qmailhost-new" || true
      if [ -s "$path.qmailhost-new" ]; then
        chown "$(stat -f '%u:%g' "$path")" "$path.qmailhost-new"; chmod "$(stat -f '%OLp' "$path")" "$path.qmailhost-new"
        mv -f "$path.qmailhost-new" "$path"
      else rm -f "$path.qmailhost-new" "$path"; fi ;;
    tmdarc|config|userdir|program) rm -rf "$path" ;;
    package) /usr/pkg/bin/pkgin -y remove tmda >/dev/null ;;
    user) userdel tofmipd ;;
    group) getent group tofmipd >/dev/null && groupdel tofmipd || true ;;
  esac
done
echo "TMDA retired; archived in $archive"
