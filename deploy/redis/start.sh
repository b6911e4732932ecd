#!/bin/sh
# Starts redis-server with the users of users.acl (beside this file): the default user off,
# "stream-monitor" with the password in $REDIS_PASSWORD. Used by deploy/compose.yaml and the
# Kubernetes StatefulSet (deploy/k8s/redis-acl.yaml holds a copy); arguments go to redis-server.
#   REDIS_PASSWORD       required: at least 32 URL-safe characters (A-Z a-z 0-9 _ -), as
#                        python -c 'import secrets; print(secrets.token_urlsafe(32))' prints;
#                        the workers' redis:// URL carries it unescaped.
#   REDIS_ACL_TEMPLATE   the rules (default: users.acl beside this script)
#   REDIS_ACL_FILE       where the rendered rules go (default /tmp/users.acl; mode 600)
set -eu
password="${REDIS_PASSWORD:-}"
if [ "${#password}" -lt 32 ]; then
    echo "start.sh: set REDIS_PASSWORD to at least 32 characters, e.g. the output of" \
         "python -c 'import secrets; print(secrets.token_urlsafe(32))'" >&2
    exit 2
fi
case "$password" in
    *[!A-Za-z0-9_-]*)
        echo "start.sh: REDIS_PASSWORD may hold only A-Z a-z 0-9 _ - (it goes into a redis:// URL)" >&2
        exit 2 ;;
esac
template="${REDIS_ACL_TEMPLATE:-$(dirname "$0")/users.acl}"
rendered="${REDIS_ACL_FILE:-/tmp/users.acl}"
hash=$(printf '%s' "$password" | sha256sum | cut -d ' ' -f 1)
umask 077
# ACL files take no comments; the SHA-256 is hex, safe in a sed replacement.
sed -e '/^[[:space:]]*#/d' -e '/^[[:space:]]*$/d' -e "s/@REDIS_PASSWORD_SHA256@/$hash/" "$template" > "$rendered"
unset REDIS_PASSWORD password
exec redis-server --aclfile "$rendered" "$@"
