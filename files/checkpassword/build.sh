#!/bin/sh
# Build checkpassword from its release tarball ($1) and install it as $2, setuid root
# but executable only by group $3 (the submission service's group): it must read
# /etc/shadow and switch to the user, and nothing else on the host needs to run it.
set -eu
work=/var/lib/qmailhost/build/checkpassword
rm -rf "$work" && mkdir -p "$work" && cd "$work"
tar xzf "$1" --strip-components=1
sed -i '1c gcc -O2 -std=gnu89 -include /usr/include/errno.h' conf-cc
make checkpassword >"$work/make.log" 2>&1 || { tail -30 "$work/make.log" >&2; exit 1; }
install -o root -g "$3" -m 4750 checkpassword "$2.qmailhost-new" && mv -f "$2.qmailhost-new" "$2"
cd / && rm -rf "$work"
