# Shared by scripts/example and scripts/test (sourced, not run): make sure .venv exists
# and has amphora installed with the given extras, quickly when nothing changed.
#
#   ensure_venv ""       # the package alone
#   ensure_venv test     # the package and its test dependencies
#
# pip runs only when pyproject.toml, setup.py, the C source, the Python version or the
# extras changed since the last successful install (a stamp file in .venv records them).
# The install is editable, so edits to the Python sources need no reinstall.
#
# The environment is .venv, or the directory named by $VENV when set (scripts/test sets
# it with venv_for_python, so that each Python version gets its own).

VENV="${VENV:-.venv}"

venv_for_python() {
    # .venv, unless it was made by another Python version than python3 (PYENV_VERSION=3.13.0
    # ./scripts/test): then .venv-X.Y, so that each version keeps its own installation.
    local version made
    version="$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true)"
    made="$(.venv/bin/python -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true)"
    if [ -n "$version" ] && [ -n "$made" ] && [ "$version" != "$made" ]; then
        VENV=".venv-$version"
    else
        VENV=".venv"
    fi
}

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
    if [ -d "$VENV" ] && ! "$VENV/bin/python" -c '' >/dev/null 2>&1; then
        echo "scripts: $VENV is broken; recreating it" >&2
        rm -rf "$VENV"
    fi
    if [ ! -x "$VENV/bin/python" ]; then
        ensure_python_venv
        echo "scripts: creating $VENV" >&2
        python3 -m venv "$VENV"
    fi

    local want stamp
    # The C fast path (src/amphora/*.c) is built by the install: a change to it reinstalls.
    want="$( { cat pyproject.toml setup.py src/amphora/*.c; "$VENV/bin/python" -VV; } \
             | sha256sum | cut -d' ' -f1)"
    # The test install is a superset of the plain one.
    for stamp in "$VENV/.amphora-installed-${extras:-base}" "$VENV/.amphora-installed-test"; do
        if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
            return 0
        fi
    done
    local target="."
    if [ -n "$extras" ]; then
        target=".[$extras]"
    fi
    echo "scripts: installing amphora${extras:+[$extras]} into $VENV" >&2
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$target"
    echo "$want" > "$VENV/.amphora-installed-${extras:-base}"
}
