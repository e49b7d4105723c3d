# TMDA's pieces that must be gone from a host once the tmda submission mode is retired:
# prints each one still present, one per line. Read-only.
for path in /etc/tmdarc /usr/bin/tmda-* /usr/local/bin/tmda-* \
            {{ service_dir }}/*tmda* {{ service_dir }}/*tofmipd* \
            {{ supervise_dir }}/*tmda* {{ supervise_dir }}/*tofmipd*; do
  [ -e "$path" ] && echo "$path"
done
getent passwd | cut -d: -f6 | sort -u | while read -r home; do
  [ -d "$home/.tmda" ] && echo "$home/.tmda"
  for dotqmail in "$home"/.qmail*; do
    [ -f "$dotqmail" ] && grep -q tmda-filter "$dotqmail" && echo "$dotqmail (pipes to tmda-filter)"
  done
done
for dotqmail in {{ qmail_home }}/alias/.qmail*; do
  [ -f "$dotqmail" ] && grep -q tmda-filter "$dotqmail" && echo "$dotqmail (pipes to tmda-filter)"
done
for conf in {{ config_dir }}/stunnel.conf /etc/stunnel/*.conf; do
  [ -f "$conf" ] && grep -Eq '^[[:space:]]*connect[[:space:]]*=[[:space:]]*(127\.0\.0\.1:)?8025[[:space:]]*$' "$conf" \
    && echo "$conf (a stanza connecting to 127.0.0.1:8025, tmda-ofmipd's port)"
done
true
