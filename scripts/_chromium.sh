# Sourced by scripts/test: make sure Debian's Chromium is installed.
#
# The Kanban's browser tests (tests/kanban/browser) drive it with Playwright for Python,
# given its path; Playwright's own browser download is never used. When `chromium` is not
# on PATH, install Debian's chromium package (as root, as CI runs), else say how to: the
# browser tests fail without it rather than skip.

ensure_chromium() {
    command -v chromium >/dev/null 2>&1 && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "scripts: installing Chromium (the Kanban's browser tests drive it)" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
        command -v chromium >/dev/null 2>&1 && return 0
        echo "scripts: the chromium package installed no chromium command" >&2
        exit 1
    fi
    echo "scripts: chromium not found; install it (sudo apt-get install chromium)." \
         "The Kanban's browser tests fail without it." >&2
}
