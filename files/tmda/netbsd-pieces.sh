# Lists the pieces a TMDA-era NetBSD host still has, one "KIND<TAB>PATH" per line:
# rcscript (/etc/rc.d/tofmipd), rcconf (/etc/rc.conf.d/tofmipd), stunnel (a config
# with a stanza that connects to tmda-ofmipd on 8025), tmdarc, config
# (/usr/pkg/etc/tmda), userdir (~/.tmda), dotqmail (a .qmail file with a line piping
# to tmda-filter), program (only without the package, which owns them otherwise),
# package, user, group.
# It runs as root, and so does the retirement acting on what it lists: in the homes it
# follows no link. A home that is a symbolic link is not entered; a ~/.tmda or .qmail
# file is a piece only when it is no symbolic link and is its home's owner's (or root's,
# and then a file's only name: no hard link a user made to one of root's files). What it
# leaves alone it says on stderr: "left alone: PATH (why)".
: "${tmda_homes:=/root /home/* /var/qmail/alias}"  # where users keep ~/.tmda and .qmail files

# Why PATH is not its home's own, when the home's owner is UID (nothing when it is):
# stat(1) without -L, so a link's own owner and link count, never its target's.
foreign() {
  if [ -L "$1" ]; then echo "a symbolic link"; return; fi
  set -- "$1" "$2" $(stat -f '%u %l' -- "$1")
  if [ "$3" = "$2" ] || { [ "$3" = 0 ] && { [ -d "$1" ] || [ "$4" = 1 ]; }; }; then return; fi
  echo "not its home's owner's"
}

[ -e /etc/rc.d/tofmipd ] && printf 'rcscript\t%s\n' /etc/rc.d/tofmipd
[ -e /etc/rc.conf.d/tofmipd ] && printf 'rcconf\t%s\n' /etc/rc.conf.d/tofmipd
for c in /usr/pkg/etc/stunnel/*.conf; do
  [ -f "$c" ] && grep -Eq '^[[:space:]]*connect[[:space:]]*=[[:space:]]*((127\.0\.0\.1|localhost):)?8025[[:space:]]*$' "$c" \
    && printf 'stunnel\t%s\n' "$c"
done
[ -e /etc/tmdarc ] && printf 'tmdarc\t%s\n' /etc/tmdarc
[ -d /usr/pkg/etc/tmda ] && printf 'config\t%s\n' /usr/pkg/etc/tmda
for home in $tmda_homes; do
  if [ -L "$home" ]; then echo "left alone: $home (a symbolic link: not entered)" >&2; continue; fi
  [ -d "$home" ] || continue
  uid=$(stat -f %u -- "$home")
  if [ -e "$home/.tmda" ] || [ -L "$home/.tmda" ]; then
    why=$(foreign "$home/.tmda" "$uid")
    if [ -n "$why" ]; then echo "left alone: $home/.tmda ($why)" >&2
    elif [ -d "$home/.tmda" ]; then printf 'userdir\t%s\n' "$home/.tmda"; fi
  fi
  for q in "$home"/.qmail "$home"/.qmail-*; do
    { [ -f "$q" ] || [ -L "$q" ]; } || continue
    why=$(foreign "$q" "$uid")
    if [ -n "$why" ]; then echo "left alone: $q ($why)" >&2
    elif grep -q 'tmda-filter' "$q"; then printf 'dotqmail\t%s\n' "$q"; fi
  done
done
if pkg_info -e tmda >/dev/null 2>&1; then
  printf 'package\ttmda\n'
else
  for p in /usr/pkg/bin/tmda-*; do [ -e "$p" ] && printf 'program\t%s\n' "$p"; done
fi
getent passwd tofmipd >/dev/null && printf 'user\ttofmipd\n'
getent group tofmipd >/dev/null && printf 'group\ttofmipd\n'
true
