# ci/nix/make-wrapper.sh: the setup hook of the contract check's `makeWrapper` stand-in
# (ci/nix/stubs.nix). It writes real wrapper scripts with the flags nix/*.nix and the framework
# restatement use, with the meaning nixpkgs' makeWrapper documents:
#   makeWrapper EXECUTABLE WRAPPER [--set VAR VALUE] [--set-default VAR VALUE]
#               [--prefix VAR SEP VALUE] [--add-flags ARGS] [--inherit-argv0]
#   wrapProgram PROGRAM FLAGS...   (moves PROGRAM to .PROGRAM-wrapped and wraps that)
# --add-flags ARGS is pasted unquoted, so ARGS is split into words when the wrapper runs.
# Anything else is an error, so a flag the stand-in does not know cannot pass unnoticed.

makeWrapper() {
    local original=$1 wrapper=$2 argv0=
    shift 2
    local -a lines=()
    local flags=
    while (($#)); do
        case $1 in
        --set)
            lines+=("export $2=$(printf %q "$3")")
            shift 3
            ;;
        --set-default)
            lines+=("export $2=\${$2-$(printf %q "$3")}")
            shift 3
            ;;
        --prefix)
            lines+=("export $2=$(printf %q "$4")\${$2:+$(printf %q "$3")\$$2}")
            shift 4
            ;;
        --add-flags)
            flags+=" $2"
            shift 2
            ;;
        --inherit-argv0)
            argv0='-a "$0"'
            shift
            ;;
        *)
            echo "makeWrapper (contract check stand-in): unsupported argument $1" >&2
            return 1
            ;;
        esac
    done
    mkdir -p "$(dirname "$wrapper")"
    {
        echo "#!$SHELL -e"
        printf '%s\n' "${lines[@]}"
        echo "exec $argv0 $(printf %q "$original")$flags \"\$@\""
    } > "$wrapper"
    chmod +x "$wrapper"
}

wrapProgram() {
    local program=$1
    shift
    local hidden
    hidden=$(dirname "$program")/.$(basename "$program")-wrapped
    mv "$program" "$hidden"
    makeWrapper "$hidden" "$program" --inherit-argv0 "$@"
}
