# Shared by scripts/example and scripts/test (sourced, not run): make sure .venv exists
# and has amphora installed with the given extras, quickly when nothing changed.
#
#   ensure_venv ""       # the package alone
#   ensure_venv test     # the package and its test dependencies
#
# pip runs only when pyproject.toml, setup.py, the C source, the Python version or the
# extras changed since the last successful install (a stamp file in .venv records them).
# The install is editable, so edits to the Python sources need no reinstall.

ensure_python_venv() {
    # Debian ships the venv module without ensurepip (package python3-venv).
    if python3 -c 'import venv, ensurepip' >/dev/null 2>&1 && python3 -m venv --help >/dev/null 2>&1; then
        return 0
    fi
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "scripts: installing python3-venv (needed to create .venv)" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
        return 0
    fi
    echo "scripts: python3 cannot create virtual environments; install python3-venv" \
         "(sudo apt-get install python3-venv) and run this again" >&2
    exit 1
}

ensure_venv() {
    local extras="$1"
    if ! command -v python3 >/dev/null 2>&1; then
        echo "scripts: python3 is needed (3.10 or newer)" >&2
        exit 1
    fi
    if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
        echo "scripts: python3 is $(python3 -V 2>&1); amphora needs 3.10 or newer" >&2
        exit 1
    fi
    # A .venv that no longer runs (moved, or made by a removed Python) is rebuilt.
    if [ -d .venv ] && ! .venv/bin/python -c '' >/dev/null 2>&1; then
        echo "scripts: .venv is broken; recreating it" >&2
        rm -rf .venv
    fi
    if [ ! -x .venv/bin/python ]; then
        ensure_python_venv
        echo "scripts: creating .venv" >&2
        python3 -m venv .venv
    fi

    local want stamp
    # The C fast path (src/amphora/*.c) is built by the install: a change to it reinstalls.
    want="$( { cat pyproject.toml setup.py src/amphora/*.c; .venv/bin/python -VV; } \
             | sha256sum | cut -d' ' -f1)"
    # The test install is a superset of the plain one.
    for stamp in ".venv/.amphora-installed-${extras:-base}" .venv/.amphora-installed-test; do
        if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
            return 0
        fi
    done
    local target="."
    if [ -n "$extras" ]; then
        target=".[$extras]"
    fi
    echo "scripts: installing amphora${extras:+[$extras]} into .venv" >&2
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -e "$target"
    echo "$want" > ".venv/.amphora-installed-${extras:-base}"
}
