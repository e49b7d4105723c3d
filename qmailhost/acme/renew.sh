#!/bin/sh
# qmailhost (acme/): renew the ACME certificate when certbot says it is due (30 days before
# it expires), and record the outcome where the status check acme_renewal reads it. Run by
# the renewal loop (or cron), and by hand: {{ renew }} --force-renewal. Until a new pair is
# issued, the one in service stays. Written by the deploy.
{% if ca_bundle %}
REQUESTS_CA_BUNDLE={{ ca_bundle }}; export REQUESTS_CA_BUNDLE
{% endif %}
status={{ status }}
when=$(date -u +%Y-%m-%dT%H:%M:%SZ)
if out=$({{ certbot }} renew --non-interactive --no-random-sleep-on-renew --cert-name {{ lineage_name }} \
        --deploy-hook {{ hook }} {{ dirs }} "$@" 2>&1); then
    printf 'ok\t%s\n' "$when" > "$status.new"; rc=0
else
    rc=$?
    why=$(printf '%s\n' "$out" | grep -i 'error\|fail' | grep -v 'debug log' | head -1 | tr '\t' ' ' | cut -c1-300)
    printf 'failed\t%s\t%s\n' "$when" "${why:-certbot exited $rc}" > "$status.new"
fi
mv -f "$status.new" "$status"
printf '%s\n' "$out"
exit $rc
