#!/bin/sh
# qmailhost (acme/): certbot runs this after each issue and renewal of the certificate
# "{{ lineage_name }}", and a deploy runs it when the pair in {{ tls_dir }} is not the lineage's.
# It puts the pair where every TLS listener reads it (the key private from its first byte),
# then has every reader of the pair re-read it (a reload: sessions in flight stay up, except
# where a reader can only restart); spamdyke on 25 reads the pair per connection. Run by a
# deploy (QMAILHOST_INSTALL_ONLY set), it only installs: the deploy's restarts re-read it.
# Written by the deploy; edits are undone by the next one.
set -e
lineage=${RENEWED_LINEAGE:-{{ live }}}
mkdir -p {{ tls_dir }} && cd {{ tls_dir }}
umask 077
cp "$lineage/privkey.pem" key.pem.qmailhost-new
chgrp {{ key_group }} key.pem.qmailhost-new && chmod {{ key_mode }} key.pem.qmailhost-new
cp "$lineage/fullchain.pem" cert.pem.qmailhost-new && chmod 644 cert.pem.qmailhost-new
mv -f key.pem.qmailhost-new key.pem && mv -f cert.pem.qmailhost-new cert.pem
if [ -n "${QMAILHOST_INSTALL_ONLY:-}" ]; then
    echo "qmailhost: installed the certificate of $lineage (the deploy restarts its readers)"
    exit 0
fi
{% for how, service, commands in readers %}
# {{ how }} {{ service }}
{% for command in commands %}
{{ command }}
{% endfor %}
{% endfor %}
echo "qmailhost: serving the certificate of $lineage; re-read by {{ readers | map(attribute=1) | join(', ') }}"
