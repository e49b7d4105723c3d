# Lists the pieces a TMDA-era NetBSD host still has, one "KIND<TAB>PATH" per line:
# rcscript (/etc/rc.d/tofmipd), rcconf (/etc/rc.conf.d/tofmipd), stunnel (a config
# with a stanza that connects to tmda-ofmipd on 8025), tmdarc, config
# (/usr/pkg/etc/tmda), userdir (~/.tmda), dotqmail (a .qmail file with a line piping
# to tmda-filter), program (only without the package, which owns them otherwise),
# package, user, group.
[ -e /etc/rc.d/tofmipd ] && printf 'rcscript\t%s\n' /etc/rc.d/tofmipd
[ -e /etc/rc.conf.d/tofmipd ] && printf 'rcconf\t%s\n' /etc/rc.conf.d/tofmipd
for c in /usr/pkg/etc/stunnel/*.conf; do
  [ -f "$c" ] && grep -Eq '^[[:space:]]*connect[[:space:]]*=[[:space:]]*((127\.0\.0\.1|localhost):)?8025[[:space:]]*$' "$c" \
    && printf 'stunnel\t%s\n' "$c"
done
[ -e /etc/tmdarc ] && printf 'tmdarc\t%s\n' /etc/tmdarc
[ -d /usr/pkg/etc/tmda ] && printf 'config\t%s\n' /usr/pkg/etc/tmda
for home in /root /home/* /var/qmail/alias; do
  [ -d "$home/.tmda" ] && printf 'userdir\t%s\n' "$home/.tmda"
  for q in "$home"/.qmail "$home"/.qmail-*; do
    [ -f "$q" ] && grep -q 'tmda-filter' "$q" && printf 'dotqmail\t%s\n' "$q"
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
