# Sourced by the Python test runners: `ensure_venv VENV HASHED PIP_ARGS...`
# makes VENV (with $PYTHON, default python3) on first use and runs
# `pip install PIP_ARGS...` in it when it is new or when HASHED (the file
# that lists what to install) or the interpreter changed since the last
# install (a hash stamp in the venv).
ensure_venv() {
    local venv=$1 hashed=$2
    shift 2
    local python="${PYTHON:-python3}"
    local stamp="$venv/.locale2b-install-stamp"
    local want
    want="$( { sha256sum "$hashed"; "$python" -c 'import sys; print(sys.version)'; } | sha256sum | cut -d' ' -f1)"
    if [[ ! -x "$venv/bin/python" ]]; then
        echo "creating $venv" >&2
        "$python" -m venv "$venv"
    fi
    if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
        echo "installing $* into $venv" >&2
        rm -f "$stamp"
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$@"
        echo "$want" > "$stamp"
    fi
}
