# qmailhost (updates/): what the updates status check reads on NetBSD, changing nothing: the
# clock, and the age of pkg-vulnerabilities (in PKGVULNDIR, where `pkg_admin
# fetch-pkg-vulnerabilities` puts it) with what `pkg_admin audit` finds in the installed
# packages (it exits 1 when it finds one), or that the file is missing.
printf 'now\t%s\n' "$(date +%s)"
file=$(pkg_admin config-var PKGVULNDIR 2>/dev/null)/pkg-vulnerabilities
if [ -f "$file" ]; then
    printf 'fetched\t%s\n' "$(stat -f %m "$file")"
    pkg_admin audit 2>&1 | sed 's/^/audit\t/'
else
    printf 'missing\t%s\n' "$file"
fi
true
