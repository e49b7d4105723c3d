#!/bin/sh
# Build spamdyke from its release tarball ($1) and install it as $2. Without TLS:
# stunnel ends TLS in front of it, and port 25's STARTTLS is not offered.
set -eu
work=/var/lib/qmailhost/build/spamdyke
rm -rf "$work" && mkdir -p "$work" && cd "$work"
tar xzf "$1" --strip-components=1
cd spamdyke
{ ./configure --disable-tls && make; } >"$work/make.log" 2>&1 || { tail -30 "$work/make.log" >&2; exit 1; }
install -m 755 spamdyke "$2.qmailhost-new" && mv -f "$2.qmailhost-new" "$2"
cd / && rm -rf "$work"
