#!/bin/sh
# Build spamdyke from its release tarball ($1) with TLS (STARTTLS on port 25) and our
# tls-wait.patch ($5: its TLS handshake, reads, writes and shutdown wait on the
# socket, not a fixed 0.5 s a try), and install it as $2; build spamdyke-qrv from the same
# tarball and install it as $3, setuid root (it looks into homes for .qmail files) and
# executable only by group $4 (port 25's). On OpenSSL 3 its configure finds no
# SSL_library_init (a macro now) and quietly builds without TLS: the autoconf cache answer
# says where it is, and a build whose `spamdyke -v` lacks +TLS is refused. The patch must
# apply exactly (no fuzz).
set -eu
work=/var/lib/qmailhost/build/spamdyke
rm -rf "$work" && mkdir -p "$work" && cd "$work"
tar xzf "$1" --strip-components=1
patch -s -p1 --fuzz=0 < "$5" || { echo "$5 does not apply to $1" >&2; exit 1; }
cd spamdyke
{ ac_cv_search_SSL_library_init=-lssl ./configure --enable-tls && make; } >"$work/make.log" 2>&1 ||
  { tail -30 "$work/make.log" >&2; exit 1; }
version=$(./spamdyke -v 2>&1 | head -1)
case "$version" in
  *+TLS*) ;;
  *) echo "spamdyke was built without TLS ($version): port 25 could not offer STARTTLS" >&2; exit 1 ;;
esac
cd ../spamdyke-qrv
{ ./configure && make; } >"$work/make-qrv.log" 2>&1 || { tail -30 "$work/make-qrv.log" >&2; exit 1; }
install -m 755 ../spamdyke/spamdyke "$2.qmailhost-new" && mv -f "$2.qmailhost-new" "$2"
install -m 700 spamdyke-qrv "$3.qmailhost-new" && chown "root:$4" "$3.qmailhost-new" &&
  chmod 4750 "$3.qmailhost-new" && mv -f "$3.qmailhost-new" "$3"
cd / && rm -rf "$work"
