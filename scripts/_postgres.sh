# Sourced by scripts/test: make sure the PostgreSQL server programs are installed.
#
# The tests start their own private server (tests/pgserver.py) with initdb and pg_ctl;
# they only need the programs. When neither PATH nor /usr/lib/postgresql/*/bin has
# initdb, install Debian's postgresql package (as root, as CI runs), else say how to.

have_postgres_programs() {
    command -v initdb >/dev/null 2>&1 && return 0
    local bindir
    for bindir in /usr/lib/postgresql/*/bin; do
        [ -x "$bindir/initdb" ] && [ -x "$bindir/pg_ctl" ] && return 0
    done
    return 1
}

ensure_postgres() {
    have_postgres_programs && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "scripts: installing PostgreSQL (the tests start a private server)" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
        have_postgres_programs && return 0
        echo "scripts: the postgresql package installed no initdb" >&2
        exit 1
    fi
    echo "scripts: PostgreSQL server programs (initdb, pg_ctl) not found; install them" \
         "(sudo apt-get install postgresql). The PostgreSQL tests skip without them," \
         "and fail under CI." >&2
}
