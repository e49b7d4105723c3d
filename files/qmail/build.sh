#!/bin/sh
# Build notqmail from its release tarball ($1) with the qmail-tls patch ($2: TLS for
# qmail-remote; qmail-smtpd's TLS stays off, see smtpd/) and install it into /var/qmail.
# First install: notqmail's own instpackage + instchown (nothing runs yet).
# Upgrade: stage with DESTDIR, then replace each file by rename (running binaries
# keep their old inode), owners and modes taken from the installed files.
# The queue is never touched once it exists.
set -eu
work=/var/lib/qmailhost/build/notqmail
rm -rf "$work" && mkdir -p "$work/src" && cd "$work/src"
tar xzf "$1" --strip-components=1
patch -s -p1 < "$2"
# gcc 14 rejects notqmail 1.08's implicit declarations; gnu89 builds on gcc 12 and 14.
# The patch's -DTLS=... on conf-cc's first line is kept: without it there is no TLS.
tls=$(sed -n '1s/.*\(-DTLS=[0-9]*\).*/\1/p' conf-cc)
[ -n "$tls" ] || { echo "the qmail-tls patch did not set -DTLS in conf-cc" >&2; exit 1; }
sed -i "1c cc -O2 -std=gnu89 $tls" conf-cc
make it man >"$work/make.log" 2>&1 || { tail -30 "$work/make.log" >&2; exit 1; }
if [ ! -f /var/qmail/.qmailhost-installed ]; then
  ./instpackage && ./instchown
else
  DESTDIR="$work/stage" ./instpackage
  cd "$work/stage/var/qmail"
  find . -path ./queue -prune -o -type d -print | while read -r d; do
    [ -d "/var/qmail/$d" ] || install -d -m "$(stat -c %a "$d")" "/var/qmail/$d"
  done
  find . -path ./queue -prune -o -type f -print | while read -r f; do
    target="/var/qmail/$f"
    cp "$f" "$target.qmailhost-new"
    if [ -e "$target" ]; then
      chown --reference="$target" "$target.qmailhost-new"
      chmod --reference="$target" "$target.qmailhost-new"
    else
      chmod "$(stat -c %a "$f")" "$target.qmailhost-new"
    fi
    mv -f "$target.qmailhost-new" "$target"
  done
  cd "$work/src"
fi
./instcheck
touch /var/qmail/.qmailhost-installed
rm -rf "$work"
