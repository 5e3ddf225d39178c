# ci/nix/stub-builder.sh: the builder of every derivation of ci/nix/stubs.nix. A small
# restatement of what nixpkgs' generic stdenv does before it runs a `runCommand` build command
# (no phases, no fixupPhase), as far as the drop-in's contract depends on it:
#   - inputs: every store path in nativeBuildInputs and buildInputs, then, depth first and
#     each path once, everything listed in their nix-support/propagated-build-inputs and
#     nix-support/propagated-native-build-inputs;
#   - each input's bin/ goes on PATH (before the host's tools), its nix-support/setup-hook is
#     sourced;
#   - the functions those hooks register with addEnvHooks then run once per input; without
#     strictDeps (runCommand's default) that is every hook on every input, whatever its offset.
# Python's setup hook is one such function: it is how the driver derivation's PYTHONPATH
# comes from propagated-build-inputs. Run by Nix as `bash stub-builder.sh`.
# shellcheck disable=SC2154 # hostPath, buildCommand, …: the derivation's environment
set -euo pipefail

export PATH=$hostPath
declare -a ntdInputs=()
declare -a ntdEnvHooks=()

ntdVisit() {
    local path=$1 file dep
    [[ -e $path ]] || { echo "stub-builder: input $path does not exist" >&2; exit 1; }
    [[ " ${ntdInputs[*]-} " == *" $path "* ]] && return 0
    ntdInputs+=("$path")
    for file in propagated-build-inputs propagated-native-build-inputs; do
        [[ -f $path/nix-support/$file ]] || continue
        for dep in $(< "$path/nix-support/$file"); do
            ntdVisit "$dep"
        done
    done
}

addEnvHooks() {
    shift # the host offset: without strictDeps every hook sees every input
    ntdEnvHooks+=("$@")
}

for input in ${nativeBuildInputs-} ${buildInputs-}; do
    ntdVisit "$input"
done

inputPath=
for input in "${ntdInputs[@]}"; do
    [[ -d $input/bin ]] && inputPath=${inputPath:+$inputPath:}$input/bin
done
PATH=${inputPath:+$inputPath:}$PATH

# shellcheck disable=SC2034 # read by the setup hooks sourced below
hostOffset=0
for input in "${ntdInputs[@]}"; do
    if [[ -f $input/nix-support/setup-hook ]]; then
        # shellcheck disable=SC1091 # a store path known only at build time
        source "$input/nix-support/setup-hook"
    fi
done
for hook in "${ntdEnvHooks[@]}"; do
    for input in "${ntdInputs[@]}"; do
        "$hook" "$input"
    done
done

cd "$NIX_BUILD_TOP"
eval "$buildCommand"
