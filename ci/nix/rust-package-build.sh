# ci/nix/rust-package-build.sh: the build command of the contract check's buildRustPackage
# stand-in (ci/nix/stubs.nix), run by ci/nix/stub-builder.sh with the derivation's environment
# (src, the env attributes of nix/package.nix, postInstall, prebuiltNtd, …).

# shellcheck disable=SC2154 # src, out, …: the derivation's environment
cp -r "$src" source
chmod -R u+w source
cd source || exit 1

# What cargoSetupHook does after unpacking: make .cargo/ if the sources have none and append
# a table for the build platform's triple (its linker) to .cargo/config.toml.
mkdir -p .cargo
printf '[target."%s"]\n"linker" = "%s"\n' "$rustTarget" "$hostCc" >> .cargo/config.toml
echo "ntd-check: .cargo/config.toml of the packaged sources after cargoSetupHook's table:"
sed 's/^/    /' .cargo/config.toml

# Every cargo command of the build reads that file first.
cargo metadata --offline --no-deps --format-version 1 > /dev/null

# The static flag must reach rustc for the crate (buildRustPackage passes --target, so
# target.<triple>.rustflags apply to it and not to proc-macros). `cargo check -v` prints the
# rustc command of every unit it compiles; the crate's sources are fresh copies, so its units
# always compile.
cargo check --release --offline --locked --target "$rustTarget" -v 2> check.log ||
    { cat check.log >&2; exit 1; }
crate='Running .*rustc --crate-name ntd '
if ! grep -E "$crate.*target-feature=\+crt-static" check.log > /dev/null; then
    echo "ntd-check: rustc compiled the ntd crate without -C target-feature=+crt-static:" >&2
    grep -E "$crate" check.log >&2 || cat check.log >&2
    exit 1
fi
echo "ntd-check: the ntd crate compiles from the packaged sources, with +crt-static"

# The installed binary: the one ci/check-nix built with the repository's configuration, which
# must be static like the package's.
readelf -l "$prebuiltNtd" > program-headers
if grep -q INTERP program-headers; then
    echo "ntd-check: $prebuiltNtd is dynamically linked" >&2
    exit 1
fi
mkdir -p "$out/bin"
cp "$prebuiltNtd" "$out/bin/ntd"
chmod +x "$out/bin/ntd"
eval "${postInstall:-}"
