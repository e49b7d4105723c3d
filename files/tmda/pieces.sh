# Lists the pieces a TMDA-era host still has, one "KIND<TAB>PATH" per line:
# service (daemontools link), initscript, stunnel (a config with a stanza that connects
# to tmda-ofmipd on 8025), tmdarc, userdir (~/.tmda), dotqmail (a .qmail file with a
# line piping to tmda-filter), program, package, user, group.
for s in /etc/service/tmda-ofmipd /etc/service/tofmipd; do
  { [ -e "$s" ] || [ -L "$s" ]; } && printf 'service\t%s\n' "$s"
done
for s in /etc/init.d/tmda-ofmipd /etc/init.d/tofmipd; do [ -e "$s" ] && printf 'initscript\t%s\n' "$s"; done
for c in /etc/stunnel/*.conf; do
  [ -f "$c" ] && grep -Eq '^[[:space:]]*connect[[:space:]]*=[[:space:]]*((127\.0\.0\.1|localhost):)?8025[[:space:]]*$' "$c" \
    && printf 'stunnel\t%s\n' "$c"
done
[ -e /etc/tmdarc ] && printf 'tmdarc\t%s\n' /etc/tmdarc
for home in /root /home/* /var/qmail/alias; do
  [ -d "$home/.tmda" ] && printf 'userdir\t%s\n' "$home/.tmda"
  for q in "$home"/.qmail "$home"/.qmail-*; do
    [ -f "$q" ] && grep -q 'tmda-filter' "$q" && printf 'dotqmail\t%s\n' "$q"
  done
done
for p in /usr/bin/tmda-* /usr/local/bin/tmda-*; do [ -e "$p" ] && printf 'program\t%s\n' "$p"; done
dpkg-query -W -f '${Status}\n' tmda 2>/dev/null | grep -q 'install ok installed' && printf 'package\ttmda\n'
getent passwd tofmipd >/dev/null && printf 'user\ttofmipd\n'
getent group tofmipd >/dev/null && printf 'group\ttofmipd\n'
true
