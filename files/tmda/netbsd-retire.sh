#!/bin/sh
# Retire TMDA on NetBSD: archive every piece a TMDA-era host still has, then remove it.
# The archive (/var/lib/qmailhost/tmda-archive/<UTC time>/) holds pieces.tar (owners,
# modes and content as they were), MANIFEST (kind, path, sha256 of each file) and the
# tofmipd account lines, so submission mode "tmda" can put the configuration back.
# Mail and Maildirs are never touched: a .qmail file loses only its tmda-filter lines.
# Run as root in users' homes, it follows none of their links (netbsd-pieces.sh lists
# only what is no link and its home's owner's; the archive and removal follow no link,
# and a .qmail file is rewritten as drop_tmda_lines says); what it leaves alone it says.
set -eu
: "${tmda_archive:=/var/lib/qmailhost/tmda-archive}"  # where the archives are kept

# Rewrites the .qmail file $1 without its tmda-filter lines, or fails and changes nothing.
# One descriptor reads it, and what that descriptor is decides (stat(1) with no operand:
# the file on stdin): the file that the name $1 still is (no link swapped in since it
# was listed), of its home's owner $2 (or root's, its only name). The new file has a
# name no one can guess, is created exclusively (set -C: never through a link planted
# there) with that file's owner and mode (a umask and chown -h: never through a name),
# then renamed over $1.
drop_tmda_lines() (
  new=$(mktemp -u "$1.qmailhost-XXXXXXXX")
  set -C
  set -- "$1" "$2" "$new" $(stat -f '%u %g %OLp %l %d %i')
  [ "$(stat -f '%d %i' -- "$1")" = "$8 $9" ] || exit 1
  [ "$4" = "$2" ] || { [ "$4" = 0 ] && [ "$7" = 1 ]; } || exit 1
  umask "$(printf %o $(( 0777 & ~0$6 )))"
  exec 3> "$3"
  grep -v 'tmda-filter' >&3 || [ $? = 1 ] || { rm -f "$3"; exit 1; }
  if [ -s "$3" ]; then chown -h "$4:$5" "$3" && mv -f "$3" "$1"; else rm -f "$3" "$1"; fi
) < "$1"

pieces=$(sh "$(dirname "$0")/netbsd-pieces.sh")
[ -n "$pieces" ] || exit 0
archive=$tmda_archive/$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$archive" && chmod 700 "$tmda_archive" "$archive"

# 1. Archive: the manifest, then a tar of every path.
echo "$pieces" | while IFS='	' read -r kind path; do
  case "$kind" in
    package|user|group) printf '%s\t%s\t-\n' "$kind" "$path" ;;
    *) find -P "$path" \( -type f -o -type l \) 2>/dev/null | sort | while read -r f; do
         if [ -f "$f" ] && [ ! -L "$f" ]; then sum=$(openssl dgst -sha256 -r < "$f" | cut -c1-64); else sum=link; fi
         printf '%s\t%s\t%s\n' "$kind" "$f" "$sum"
       done ;;
  esac
done > "$archive/MANIFEST"
grep -E '^tofmipd:' /etc/master.passwd /etc/group > "$archive/accounts" 2>/dev/null || true
paths=$(echo "$pieces" | awk -F'\t' '$1 !~ /^(package|user|group)$/ {print $2}')
# Without -h: a link is archived as the link it is.
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
      drop_tmda_lines "$path" "$(stat -f %u -- "${path%/*}")" \
        || echo "left alone: $path (no longer a file of its home's owner)" >&2 ;;
    # rm follows no link: a ~/.tmda made a link since it was listed loses only the link.
    tmdarc|userdir|config|program) rm -rf "$path" ;;
    package) /usr/pkg/bin/pkgin -y remove tmda >/dev/null ;;
    user) userdel tofmipd ;;
    group) getent group tofmipd >/dev/null && groupdel tofmipd || true ;;
  esac
done
echo "TMDA retired; archived in $archive"
