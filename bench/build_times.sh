#!/bin/sh
# The bare build time of each component: unpack and make (the build scripts' settings,
# no install), one after the other, on the host itself. Prints "component seconds".
set -eu
d=/var/lib/qmailhost/distfiles
w=/tmp/qmailhost-bench-build
now() { date +%s.%N; }
build() {  # name tarball conf-cc-line patch make-target...
  name=$1 tarball=$2 cc=$3 patchfile=$4; shift 4
  rm -rf "$w" && mkdir -p "$w" && cd "$w"
  start=$(now)
  tar xzf "$tarball" --strip-components=1
  [ -n "$patchfile" ] && patch -s -p1 < "$patchfile"
  [ -n "$cc" ] && sed -i "1c $cc" conf-cc
  make "$@" >/dev/null 2>&1
  echo "$name $(awk "BEGIN { print $(now) - $start }")"
}
build notqmail "$d"/notqmail-*.tar.gz 'cc -O2 -std=gnu89' '' it man
build mess822 "$d"/mess822-*.tar.gz 'gcc -O2 -include /usr/include/errno.h -Wno-implicit-function-declaration' '' ofmipd ofmipname
build mess822-auth "$d"/mess822-*.tar.gz 'gcc -O2 -include /usr/include/errno.h -Wno-implicit-function-declaration' "$d/mess822-smtp-auth-patch.txt" ofmipd ofmipname
build checkpassword "$d"/checkpassword-*.tar.gz 'gcc -O2 -std=gnu89 -include /usr/include/errno.h' '' checkpassword
rm -rf "$w" && mkdir -p "$w" && cd "$w"
start=$(now)
tar xzf "$d"/spamdyke-*.tgz --strip-components=1
cd spamdyke && ./configure --disable-tls >/dev/null 2>&1 && make >/dev/null 2>&1
echo "spamdyke $(awk "BEGIN { print $(now) - $start }")"
rm -rf "$w"
