#!/bin/sh
# Build mess822's ofmipd twice from one release tarball ($1): stock, and with John
# Levine's SMTP AUTH patch ($2), installed side by side as PREFIX/mess822/bin/ofmipd
# and ofmipd-auth ($3 = PREFIX), so a submission mode switch never needs a rebuild.
# mess822's `make setup` is not used: it would install /etc/leapsecs.dat, a 1998
# leap-second table that skews ofmipd's Received: times.
set -eu
work=/var/lib/qmailhost/build/mess822
bin="$3/mess822/bin"
rm -rf "$work" && mkdir -p "$work/stock" "$work/auth" "$bin"
for tree in stock auth; do
  cd "$work/$tree"
  tar xzf "$1" --strip-components=1
  [ "$tree" = auth ] && patch -s -p1 < "$2"
  # errno: glibc's is thread-local, mess822 declares its own; gcc 14 rejects implicit declarations.
  sed -i '1c gcc -O2 -include /usr/include/errno.h -Wno-implicit-function-declaration' conf-cc
  make ofmipd ofmipname >"$work/$tree.log" 2>&1 || { tail -30 "$work/$tree.log" >&2; exit 1; }
done
install -m 755 "$work/stock/ofmipd" "$bin/ofmipd.qmailhost-new" && mv -f "$bin/ofmipd.qmailhost-new" "$bin/ofmipd"
install -m 755 "$work/stock/ofmipname" "$bin/ofmipname.qmailhost-new" && mv -f "$bin/ofmipname.qmailhost-new" "$bin/ofmipname"
install -m 755 "$work/auth/ofmipd" "$bin/ofmipd-auth.qmailhost-new" && mv -f "$bin/ofmipd-auth.qmailhost-new" "$bin/ofmipd-auth"
rm -rf "$work"
