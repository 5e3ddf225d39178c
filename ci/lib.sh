# Shared helpers for ci/ scripts (sourced, not executed).

# ensure_packages PKG...: install the Debian packages that are missing (apt-get update once).
ensure_packages() {
	local missing=() p
	for p in "$@"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
	done
	[ ${#missing[@]} -eq 0 ] && return 0
	echo "ci: installing ${missing[*]}" >&2
	if [ "$(id -u)" -ne 0 ]; then
		echo "ci: need root (or sudo) to install: ${missing[*]}" >&2
		sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
	else
		apt-get update -qq >&2
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
	fi
}

# ensure_cargo: a Rust toolchain recent enough for the crate (rust-version in Cargo.toml).
ensure_cargo() {
	if ! command -v cargo >/dev/null; then
		[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
	fi
	if ! command -v cargo >/dev/null; then
		echo "ci: cargo not found; install Rust >= 1.80 (https://rustup.rs) and retry" >&2
		exit 1
	fi
}

# The packages every run of ntd and its tests needs on the host.
NTD_HOST_PACKAGES=(qemu-system-x86 python3 vde2 busybox-static bash-static netcat-openbsd kmod)

repo_root() {
	cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd
}
