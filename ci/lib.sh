# shellcheck shell=bash
# Shared helpers for ci/ scripts (sourced, not executed). The one place for the rules the ci/
# scripts, the Python ci helpers (ci/cilib.py) and the Rust tests (tests/common) share:
# where the cache lives and how Debian packages get installed.
#
#   source "$(dirname "$0")/lib.sh"     # from a ci/ script
#   bash -c 'source ci/lib.sh && ensure_packages "$@"' bash PKG...   # from anything else

# ntd_cache_dir: print the cache root of guests, debs, virtualenvs and the mypy cache.
ntd_cache_dir() {
	printf '%s\n' "${NTD_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ntd}"
}

# ensure_packages PKG...: install the Debian packages that are missing (one dpkg-query for all
# of them, so the common case, everything installed, stays fast; apt-get update once). Runs
# apt-get as root, else through sudo, else fails saying what to install. Logs go to stderr.
ensure_packages() {
	local missing=() pkg status
	local -A installed=()
	# shellcheck disable=SC2016 # a dpkg-query format string, not a shell expansion
	while read -r pkg status; do
		if [[ $status == installed ]]; then installed[$pkg]=1; fi
	done < <(dpkg-query -W -f='${Package} ${db:Status-Status}\n' "$@" 2>/dev/null || true)
	for pkg in "$@"; do
		[[ -n ${installed[$pkg]:-} ]] || missing+=("$pkg")
	done
	((${#missing[@]} == 0)) && return 0
	local as_root=()
	if ((EUID != 0)); then
		if ! command -v sudo >/dev/null; then
			echo "ci: missing Debian packages ${missing[*]}: install them or run as root" >&2
			return 1
		fi
		as_root=(sudo)
	fi
	echo "ci: installing ${missing[*]}" >&2
	"${as_root[@]}" apt-get update -qq >&2 || return
	"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
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
# shellcheck disable=SC2034 # used by the scripts that source this file
NTD_HOST_PACKAGES=(qemu-system-x86 python3 vde2 busybox-static bash-static netcat-openbsd kmod)
# What systemd-nspawn containers need on the host (run as root): nspawn itself, nsenter and
# unshare, ip (the run-<name>-nspawn scripts), journalctl (ships with systemd), and mmdebstrap
# for ci/build-container-root; newuidmap (uidmap) for the emulated Nix sandbox of tests/containers.rs.
# shellcheck disable=SC2034 # used by the scripts that source this file
NTD_CONTAINER_PACKAGES=(systemd-container util-linux iproute2 mmdebstrap uidmap)

repo_root() {
	cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd
}
