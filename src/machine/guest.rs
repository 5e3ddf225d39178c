//! What ntd sends to the guest's backdoor shell: the guest-side machinery (a setup block sent
//! once per shell, then the timeout and wait parts with the first command that needs them) and
//! the one-line encodings of every request (run, timed run, wait, spool count and fetch).
//!
//! Every byte sent is a `read()` in the guest's bash (about 10 µs each under TCG) and every
//! fork costs milliseconds, so the scripts are small, sent lazily and shortened on the wire
//! ([`WIRE_PREFIX`]). This module is pure text: it never touches a socket; what comes back is
//! cut into results by [`super::shell::ShellFraming`].
#![deny(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    clippy::cast_precision_loss
)]

use super::shell::NONCE_LEN;
use super::waits::{micros, GuestCheck, PaceMode, Pacing};
pub use super::watchdog::{HostMessage, SETUP_TIMEOUTS};
use super::words::shell_quote;
use std::fmt::Write as _;
use std::time::Duration;

/// The setup block sent once per shell (again after a reboot), before the first command.
///
/// - fd 3: a pipe drained by one long-lived `tee` that writes to the console and appends to a
///   spool file in tmpfs, so output the virtio console dropped can be fetched again in pieces
///   small enough to never be dropped (`__ntd_fetch`, straight to the console). `tee` writes
///   the spool before the console, so once the host has seen a frame's end, the spool has it
///   too. The host knows every frame's offset in the spool (it counts what arrived) and
///   truncates the spool, now and then, in front of a command (`: >"$__ntd_sp"`); truncating
///   before every command would cost a tenth of the per-command latency;
/// - fd 5: `/dev/null`, every command's stdin.
///
/// A command's stdout is fd 3 itself, so the common case costs one fork and no exec. A
/// command may leave processes behind that still hold its stdout (`(echo ONE; sleep 15; echo
/// TWO) &`): upstream's driver returns only when stdout is closed (nixpkgs #144875, PR
/// #471141), and so does ntd, finding them without exec. The shell keeps the last PID the
/// kernel handed out (`/proc/loadavg`, `__ntd_pl`), read at setup, after every command and
/// after every wait: the PIDs since then bound what the command created. One new PID is the
/// command's own subshell, which has exited: done, one small read per command (under TCG
/// about 3 % of a `succeed("true")`; a second read before the command would double that).
/// Otherwise `__ntd_new` looks for one of them that is still alive (a `stat` each) and only
/// then `__ntd_held` checks the live ones for an fd that is the same pipe as fd 3 (`-ef`, a
/// bash builtin; processes that are not the command's never are). If some hold it, the shell
/// polls (pauses of a
/// twentieth of the time waited, 20 ms .. 1 s; processes they start are added), returns when
/// none is left, reports them once after 10 s (`\x01H<nonce> <bytes>\x01` followed by that
/// many bytes of `<pid> <command line>` lines) and, for a timed command, SIGTERMs them at the
/// deadline (status 124, as `timeout`).
///
/// The backdoor contract promises bash on `/dev/hvc0` and nothing more: without `/dev/fd`
/// (which process substitution and `tee /dev/fd/9` need) or without `tee`, fd 3 is the console
/// itself and `__ntd_m` is 3 ("no spool": output the console drops can then be neither
/// detected nor fetched again). The setup check frame ([`SETUP_CHECK`]) reports that mode
/// as its exit status.
///
/// bash reads its script one byte per `read()` from the console (about 10 µs per byte under
/// TCG) and every fork costs milliseconds, so only what every command needs is here; the
/// timeout and wait machinery follows with the first command that needs it
/// ([`SETUP_TIMEOUTS`], [`SETUP_WAITS`]).
pub const SETUP: &str = r#"__ntd_sp=/dev/shm
[[ -d $__ntd_sp && -w $__ntd_sp ]] || __ntd_sp=/tmp
__ntd_sp=$__ntd_sp/.ntd-spool-$$
__ntd_m=0
exec 9>&1
if [[ -e /dev/fd/9 ]] && type -P tee >/dev/null; then
  exec 3> >(exec tee -a "$__ntd_sp" /dev/fd/9 >/dev/null)
  { : >&3; } 2>/dev/null || { exec 3>&1; __ntd_m=3; }
else
  exec 3>&1; __ntd_m=3
fi
__ntd_cp=$!
exec 5</dev/null 9>&-
read -r __ntd_pl __ntd_pl __ntd_pl __ntd_pl __ntd_pl </proc/loadavg || __ntd_pl=
__ntd_r() {
  ( eval "set -euo pipefail; $__ntd_c" ) <&5 >&3 3>&- 5<&- 6>&- 7<&-
  __ntd_s=$?
  if read -r __ntd_q __ntd_q __ntd_q __ntd_q __ntd_q </proc/loadavg; then
    (( __ntd_q - __ntd_pl == 1 )) || __ntd_new
    __ntd_pl=$__ntd_q
  fi
  printf '\001E%s %d\001' "$__ntd_n" "$__ntd_s" >&3
}
__ntd_new() {
  local __ntd_i=$__ntd_pl
  (( __ntd_q == __ntd_i )) && return 0
  if (( __ntd_q > __ntd_i && __ntd_q - __ntd_i < 4096 )); then
    while (( __ntd_i < __ntd_q )); do
      [[ -e /proc/$(( ++__ntd_i )) ]] && break
    done
    [[ -e /proc/$__ntd_i ]] || return 0
  fi
  __ntd_held "$__ntd_pl" "$@"
}
__ntd_held() {
  local __ntd_lo=$1 __ntd_hi __ntd_p __ntd_g __ntd_w=0 __ntd_e=${EPOCHREALTIME/./} __ntd_u __ntd_z __ntd_d= __ntd_x
  local -a __ntd_h=() __ntd_k
  if [[ $2 ]]; then
    __ntd_d=${3#*.}000000
    (( __ntd_d = $2 + ${3%.*} * 1000000 + 10#${__ntd_d:0:6} ))
  fi
  while :; do
    read -r __ntd_hi __ntd_hi __ntd_hi __ntd_hi __ntd_hi </proc/loadavg || return 0
    if (( __ntd_hi >= __ntd_lo && __ntd_hi - __ntd_lo < 4096 )); then
      for (( __ntd_p = __ntd_lo + 1; __ntd_p <= __ntd_hi; __ntd_p++ )); do
        [[ -e /proc/$__ntd_p ]] && __ntd_h+=("$__ntd_p")
      done
    else
      __ntd_h=(/proc/[0-9]*)
      __ntd_h=("${__ntd_h[@]#/proc/}")
    fi
    __ntd_lo=$__ntd_hi __ntd_k=()
    for __ntd_p in "${__ntd_h[@]}"; do
      (( __ntd_p == $$ || __ntd_p == ${__ntd_cp:-0} || __ntd_p == ${__ntd_wd_PID:-0} )) && continue
      for __ntd_g in /proc/$__ntd_p/fd/*; do
        [[ $__ntd_g -ef /dev/fd/3 ]] && { __ntd_k+=("$__ntd_p"); break; }
      done
    done
    (( ${#__ntd_k[@]} )) || return 0
    __ntd_h=("${__ntd_k[@]}")
    __ntd_u=${EPOCHREALTIME/./}
    if [[ $__ntd_d ]] && (( __ntd_u >= __ntd_d )); then
      kill -TERM "${__ntd_h[@]}" 2>/dev/null
      return 124
    fi
    if (( !__ntd_w && __ntd_u - __ntd_e >= 10000000 )); then
      __ntd_w=1
      __ntd_report "${__ntd_h[@]}"
    fi
    (( __ntd_z = (__ntd_u - __ntd_e) / 20, __ntd_z = __ntd_z < 20000 ? 20000 : __ntd_z > 1000000 ? 1000000 : __ntd_z ))
    [[ $__ntd_d ]] && (( __ntd_z > __ntd_d - __ntd_u )) && (( __ntd_z = __ntd_d - __ntd_u ))
    printf -v __ntd_x '%d.%06d' $(( __ntd_z / 1000000 )) $(( __ntd_z % 1000000 ))
    if [[ ${__ntd_wd_PID:-} ]] && kill -0 "$__ntd_wd_PID" 2>/dev/null; then
      __ntd_g=
      read -t "$__ntd_x" -r -u 7 __ntd_g
      if [[ $__ntd_g == k ]]; then
        kill -TERM "${__ntd_h[@]}" 2>/dev/null
        return 124
      fi
    else
      sleep "$__ntd_x"
    fi
  done
}
__ntd_report() {
  local LC_ALL=C __ntd_p __ntd_o= __ntd_t __ntd_v
  local -a __ntd_a
  for __ntd_p; do
    __ntd_v=
    while read -r __ntd_t __ntd_v; do [[ $__ntd_t == Tgid: ]] && break; done 2>/dev/null </proc/$__ntd_p/status
    [[ $__ntd_v == "$__ntd_p" ]] || continue
    __ntd_a=()
    mapfile -d '' -t __ntd_a 2>/dev/null </proc/$__ntd_p/cmdline
    __ntd_o+="$__ntd_p ${__ntd_a[*]}"$'\n'
  done
  __ntd_o=${__ntd_o:0:16384}
  printf '\001H%s %d\001%s' "$__ntd_n" "${#__ntd_o}" "$__ntd_o" >&3
}
__ntd_count() {
  local __ntd_v
  __ntd_v=$(stat -c %s "$__ntd_sp" 2>/dev/null) || __ntd_v=-1
  printf '\001C%s %s\001' "$1" "${__ntd_v:--1}" >&3
}
__ntd_fetch() {
  dd bs="$2" count=1 <&8 2>/dev/null
  printf '\001E%s %d\001' "$1" "$?"
}
"#;

/// The command of the setup's check frame: its exit status is the spool mode (0: spool, 3: no
/// spool). Anything else, or no answer at all, means the setup failed.
pub const SETUP_CHECK: &str = "exit $_Nm";
/// [`SETUP_CHECK`]'s status when the guest has no spool.
pub const SETUP_NO_SPOOL: i32 = 3;

/// Sent in front of the first wait (after [`SETUP_TIMEOUTS`]): `__ntd_loop` is the guest-side
/// wait loop (see [`super::waits`] for what an attempt is and the schedule it follows).
///
/// - An attempt evaluates its *guard* in the loop's own shell (bash builtins only, no fork:
///   `[ -e ]`, a `/dev/tcp` connect through `__ntd_port`) and, if that passed, runs its
///   *command* in a subshell. Only an attempt that forked reports itself (`A` marker with
///   its status, its cost and the pause chosen after it: its output is not the wait's) and
///   has a CPU cost (see [`super::waits::Pacing`]), read from `/proc` in 10 ms ticks as the
///   difference to the previous reading, so that nothing is lost to rounding; wall time
///   where `/proc` is missing. A builtin attempt whose guard passed without ending the
///   wait (a closed-port wait's connect that a listener accepted) costs the pacing
///   argument's `probe` (the listener's work, which the loop does not read).
/// - The pause after a failed attempt is [`super::waits::Pacing`]'s rule (`__ntd_pace`),
///   from the pacing argument (`age min max_age divisor young_us k_young k_old k_watched own%
///   overhead fast? probe`, microseconds; `overhead` is how much more upstream's attempt
///   costs than ntd's measured one, the fast rule's `1 s × cost / (cost + overhead)`; `k = 0` and `overhead = 0`: no cost term, the
///   reference schedule's fixed second). It sleeps with `read -t` on fd 7 (the watchdog's:
///   the host's pacing verdicts `f`/`b` recompute the pause, `s` ends the wait as "not yet",
///   `k` means killed) or on fd 4, a unit watcher (then fd 7 is looked at after each
///   wakeup), so pausing costs no fork. A message counts even when the pause's timer ran out
///   between its letter and its newline (bash's `read -t` then keeps the partial input and
///   reports a timeout; under TCG a starved vCPU makes that window wide): a lost `k` would
///   leave the host waiting for an answer that never comes. The holder wait of a command
///   (`__ntd_held`) reads fd 7 the same way.
/// - Under the watchdog the loop has no deadline of its own: the host stops it when the
///   wait's guest-available time is spent. Without the watchdog (it died) the loop stops
///   itself after its budget on the guest's clock, under `timeout`.
/// - A unit wait starts, after its first failed check, a watcher: `busctl monitor` of the
///   unit's `PropertiesChanged` signals (object path from `LoadUnit`, so aliases work), cut
///   by `grep` to `Monitoring…` (subscribed: check now, closing the race with the first
///   check), `StartupFinished` (the boot's jobs are done: check now, an inactive unit may
///   have no jobs left) and `"ActiveState":…` lines. An event ends the wait (`active`, or
///   the awaited state), fails it (`failed`: the fatal status) or triggers the full check
///   (`inactive`: are jobs pending?). Polling continues underneath at a quarter of the old
///   share (`k_watched`), since silence may also mean that no one subscribed to systemd's
///   signals (logind does on every ordinary system). A watcher that cannot start (no
///   busctl, no bus) ends its output: the loop polls at the full share.
/// - bash without `/dev/tcp` (probed once, `__ntd_tcp`): `__ntd_port` runs `nc -z` instead.
/// - `__ntd_url HOST PORT`, the guard of a `curl` command wait ([`super::curl`]): fails
///   only when a connect to HOST:PORT fails (`localhost`: 127.0.0.1, then ::1) and `curl`
///   would connect there directly — no proxy variable, no `.curlrc`, bash has `/dev/tcp`;
///   otherwise it passes and `curl` decides.
pub const SETUP_WAITS: &str = r#"__ntd_tcp=0
[[ $( { : </dev/tcp/127.0.0.1/0; } 2>&1 ) == *connect:* ]] && __ntd_tcp=1
__ntd_port() {
  if (( __ntd_tcp )); then
    : </dev/tcp/"$1"/"$2"
  else
    __ntd_r=1
    nc -z "$1" "$2" <&5 >/dev/null
  fi
}
__ntd_url() {
  (( __ntd_tcp )) || return 0
  [[ ${http_proxy-}${HTTP_PROXY-}${https_proxy-}${HTTPS_PROXY-}${all_proxy-}${ALL_PROXY-} ]] && return 0
  [[ -e ${CURL_HOME:-${HOME:-/}}/.curlrc || -e ${XDG_CONFIG_HOME:-${HOME:-/}/.config}/.curlrc || -e ${HOME:-/}/.curlrc ]] && return 0
  if [[ $1 == localhost ]]; then
    { : </dev/tcp/127.0.0.1/"$2"; } 2>/dev/null || : </dev/tcp/::1/"$2"
  else
    : </dev/tcp/"$1"/"$2"
  fi
}
__ntd_cpu() {
  local -a __ntd_a __ntd_b __ntd_i
  read -r -a __ntd_a </proc/stat && read -r -a __ntd_b </proc/$BASHPID/stat && read -r -a __ntd_i </proc/1/stat || return
  (( __ntd_u = __ntd_a[1] + __ntd_a[2] + __ntd_a[3] + __ntd_a[6] + __ntd_a[7] + __ntd_a[8],
     __ntd_y = __ntd_b[13] + __ntd_b[14] + __ntd_b[15] + __ntd_b[16] + __ntd_i[13] + __ntd_i[14] ))
}
__ntd_unitsrc() {
  local __ntd_p __ntd_m="type='signal',sender='org.freedesktop.systemd1'"
  __ntd_p=$(busctl call org.freedesktop.systemd1 /org/freedesktop/systemd1 \
    org.freedesktop.systemd1.Manager LoadUnit s "$1" 2>/dev/null) || exit
  __ntd_p=${__ntd_p#*\"}
  exec busctl --json=short monitor 2>&1 \
    --match "$__ntd_m,path='${__ntd_p%\"}',interface='org.freedesktop.DBus.Properties',member='PropertiesChanged',arg0='org.freedesktop.systemd1.Unit'" \
    --match "$__ntd_m,interface='org.freedesktop.systemd1.Manager',member='StartupFinished'"
}
__ntd_pace() {
  local __ntd_k
  (( __ntd_p = __ntd_a / __ntd_q[3] ))
  if (( __ntd_e == 4 )); then
    (( __ntd_k = __ntd_a < __ntd_q[4] ? __ntd_q[5] : __ntd_q[7] ))
  else
    (( __ntd_k = __ntd_q[9] ? 1000000 * __ntd_x / (__ntd_x + __ntd_q[9]) : 0,
       __ntd_p < __ntd_k && (__ntd_p = __ntd_k),
       __ntd_k = __ntd_md ? 0 : __ntd_a < __ntd_q[4] ? __ntd_q[5] : __ntd_q[6] ))
  fi
  (( __ntd_p = __ntd_p < __ntd_q[1] ? __ntd_q[1] : __ntd_p > __ntd_q[2] ? __ntd_q[2] : __ntd_p,
     __ntd_x * __ntd_k > __ntd_p && (__ntd_p = __ntd_x * __ntd_k),
     __ntd_gc && __ntd_md && __ntd_q[12] && __ntd_p > __ntd_q[12] &&
       (__ntd_p = __ntd_q[12] < __ntd_q[1] ? __ntd_q[1] : __ntd_q[12]) ))
}
__ntd_loop() {
  local __ntd_n=$1 __ntd_w=$3 __ntd_g=$5 __ntd_c=$6 __ntd_m=${10} __ntd_s __ntd_r __ntd_ts __ntd_t0 __ntd_t1 __ntd_d __ntd_p __ntd_x=0 __ntd_f __ntd_v __ntd_u=0 __ntd_o __ntd_y=0 __ntd_z __ntd_gc=0 __ntd_e=7 __ntd_wp= __ntd_a=0 __ntd_md __ntd_end __ntd_rs
  local -a __ntd_q=($8)
  __ntd_md=${__ntd_q[10]:-0}
  __ntd_t1=${EPOCHREALTIME/./}
  (( __ntd_d = ${__ntd_h:-0} ? 0 : __ntd_t1 + $4, __ntd_t0 = __ntd_t1 - __ntd_q[0] ))
  __ntd_cpu
  while :; do
    __ntd_r=0 __ntd_s=0 __ntd_gc=0 __ntd_ts=${EPOCHREALTIME/./}
    if [[ $__ntd_g ]]; then { eval "$__ntd_g"; } 2>/dev/null; __ntd_s=$?; fi
    if [[ $__ntd_c ]] && (( !__ntd_s )); then
      ( set --; eval "set -euo pipefail; $__ntd_c" ) <&5 >&3 3>&- 4<&- 5<&- 7<&-
      __ntd_s=$? __ntd_r=1
    fi
    (( (__ntd_w ? __ntd_s : !__ntd_s) || ($7 && __ntd_s >= $7) )) && break
    __ntd_t1=${EPOCHREALTIME/./}
    (( __ntd_d && __ntd_t1 >= __ntd_d )) && break
    __ntd_x=0
    if (( __ntd_r )); then
      __ntd_o=$__ntd_u __ntd_z=$__ntd_y
      if __ntd_cpu; then
        (( __ntd_x = __ntd_u - __ntd_o, __ntd_z = (__ntd_y - __ntd_z) * __ntd_q[8] / 100,
           __ntd_x = (__ntd_x < __ntd_z ? __ntd_x : __ntd_z) * 10000 ))
      else
        (( __ntd_x = __ntd_t1 - __ntd_ts ))
      fi
    elif (( !__ntd_s )) && [[ $__ntd_g ]]; then
      __ntd_x=${__ntd_q[11]:-0}
    elif [[ $__ntd_c ]]; then
      __ntd_gc=1
    fi
    (( __ntd_a = __ntd_t1 - __ntd_t0 ))
    __ntd_pace
    (( __ntd_r )) && printf '\001A%s %d %d %d\001' "$__ntd_n" "$__ntd_s" "$__ntd_x" "$__ntd_p" >&3
    if [[ $9 && ! $__ntd_wp ]]; then
      exec 4< <(exec 3>&- 7<&-; __ntd_unitsrc "$9" | grep --line-buffered -o -e '^Monitoring' -e StartupFinished -e '"ActiveState":{"type":"s","data":"[a-z-]*"}' 2>/dev/null)
      __ntd_wp=$! __ntd_e=4
    fi
    (( __ntd_d && __ntd_t1 + __ntd_p > __ntd_d && (__ntd_p = __ntd_d - __ntd_t1), __ntd_end = __ntd_t1 + __ntd_p ))
    while (( __ntd_p > 0 )); do
      printf -v __ntd_f '%d.%06d' $(( __ntd_p / 1000000 )) $(( __ntd_p % 1000000 ))
      __ntd_v=
      read -t "$__ntd_f" -u $__ntd_e __ntd_v 2>/dev/null
      __ntd_rs=$?
      (( __ntd_rs > 128 && __ntd_e == 7 )) && [[ $__ntd_v ]] && __ntd_rs=0
      case $__ntd_rs,$__ntd_e in
        0,7)
          case $__ntd_v in s) break 2 ;; k) exit 124 ;; f) __ntd_md=1 ;; b) __ntd_md=0 ;; esac
          __ntd_pace
          (( __ntd_end = __ntd_t1 + __ntd_p )) ;;
        0,4)
          [[ $__ntd_v == [MS]* ]] && break
          __ntd_v=${__ntd_v%\"*}
          __ntd_v=${__ntd_v##*\"}
          if [[ $__ntd_m == s* ]]; then
            [[ $__ntd_v == "${__ntd_m#s}" ]] && { __ntd_s=0; break 2; }
          else
            case $__ntd_v in active) __ntd_s=0; break 2 ;; failed) __ntd_s=$7; break 2 ;; inactive) break ;; esac
          fi ;;
        1,4) exec 4<&-; __ntd_e=7 ;;
        1,7) sleep "$__ntd_f"; break ;;
        *) break ;;
      esac
      (( __ntd_p = __ntd_end - ${EPOCHREALTIME/./} ))
    done
    if (( __ntd_e == 4 )); then
      while read -t 0 -u 7 2>/dev/null && read -r -u 7 __ntd_v; do
        case $__ntd_v in s) break 2 ;; k) exit 124 ;; f) __ntd_md=1 ;; b) __ntd_md=0 ;; esac
      done
    fi
  done
  [[ $__ntd_wp ]] && { exec 4<&-; __ntd_kill "$__ntd_wp"; }
  printf '\001D%s %d\001' "$__ntd_n" "$__ntd_s" >&3
}
__ntd_wait() {
  if kill -0 "$__ntd_wd_PID" 2>/dev/null; then
    ( printf '%s\n' "$BASHPID" >&6; exec 6>&-; __ntd_h=1; __ntd_loop "$@" ) <&5 >&3
    __ntd_s=$?
    __ntd_fired
    read -r __ntd_pl __ntd_pl __ntd_pl __ntd_pl __ntd_pl </proc/loadavg || __ntd_pl=
    printf '\001E%s %d\001' "$1" "$__ntd_s" >&3
    __ntd_rel
  else
    timeout "$2" bash -c "$(declare -f __ntd_loop __ntd_pace __ntd_port __ntd_url __ntd_cpu __ntd_unitsrc __ntd_kill)
__ntd_tcp=$__ntd_tcp"'
__ntd_loop "$@"' __ntd "$@" <&5 >&3 6>&- 7<&-
    __ntd_s=$?
    read -r __ntd_pl __ntd_pl __ntd_pl __ntd_pl __ntd_pl </proc/loadavg || __ntd_pl=
    printf '\001E%s %d\001' "$1" "$__ntd_s" >&3
  fi
}
"#;

/// The wire form of the `__ntd_` names in [`SETUP`]; the encoders below use it directly.
pub const WIRE_PREFIX: &str = "_N";

/// Which part of the guest-side machinery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetupPart {
    Base,
    Timeouts,
    Waits,
}

/// A setup part as sent: indentation and blank lines dropped, `__ntd_` shortened to
/// [`WIRE_PREFIX`] (every byte is a `read()` in the guest).
pub fn setup_text(part: SetupPart) -> &'static str {
    use std::sync::OnceLock;
    static TEXTS: [OnceLock<String>; 3] = [OnceLock::new(), OnceLock::new(), OnceLock::new()];
    let (cell, source) = match part {
        SetupPart::Base => (&TEXTS[0], SETUP),
        SetupPart::Timeouts => (&TEXTS[1], SETUP_TIMEOUTS),
        SetupPart::Waits => (&TEXTS[2], SETUP_WAITS),
    };
    cell.get_or_init(|| {
        let mut out = String::with_capacity(source.len());
        for line in source
            .lines()
            .map(str::trim_start)
            .filter(|l| !l.is_empty())
        {
            out.push_str(&line.replace("__ntd_", WIRE_PREFIX));
            out.push('\n');
        }
        out
    })
}

/// Why a command cannot be sent to the guest shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EncodeError {
    /// bash cannot carry NUL bytes in its input.
    NulByte,
}

impl std::fmt::Display for EncodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EncodeError::NulByte => write!(
                f,
                "the command contains a NUL byte, which a shell command line cannot carry; \
                 pass binary data base64-encoded instead"
            ),
        }
    }
}

impl std::error::Error for EncodeError {}

/// A duration as seconds the way upstream's newest driver writes a `timeout` (`900.0`, `0.5`,
/// Python's `repr(float)`): the one place where a timeout becomes text. Exact to the
/// nanosecond, no float rounding on the way.
pub fn format_seconds(d: Duration) -> String {
    let nanos = d.subsec_nanos();
    if nanos == 0 {
        format!("{}.0", d.as_secs())
    } else {
        let frac = format!("{nanos:09}");
        format!("{}.{}", d.as_secs(), frac.trim_end_matches('0'))
    }
}

/// The line that runs `command` once; with `timeout` the watchdog ends it (and its children)
/// after that many seconds with exit status 124, as upstream's `timeout <t> bash -c` does.
pub fn encode_run(
    nonce: &[u8; NONCE_LEN],
    command: &str,
    timeout: Option<Duration>,
) -> Result<String, EncodeError> {
    if command.contains('\0') {
        return Err(EncodeError::NulByte);
    }
    let nonce = std::str::from_utf8(nonce).unwrap_or("0000000000000000");
    let mut line = String::with_capacity(command.len() + 48);
    let _ = write!(line, "_Nn={nonce}; _Nc=");
    shell_quote(command, &mut line);
    match timeout {
        None => line.push_str("; _Nr\n"),
        Some(t) => {
            let _ = writeln!(line, "; _Nt={}; _Nrt", format_seconds(t));
        }
    }
    Ok(line)
}

/// The line that fetches the next `len` spooled bytes; they arrive as a frame of their own
/// (straight to the console, not through the spool). The first piece of a repair opens the
/// spool on fd 8 and seeks to `start` (dd seeks regular files), so every later piece is one
/// sequential read, however far into a large spool it lies.
pub fn encode_fetch(nonce: &[u8; NONCE_LEN], start: Option<u64>, len: usize) -> String {
    let nonce = std::str::from_utf8(nonce).unwrap_or("0000000000000000");
    match start {
        Some(off) => format!(
            "exec 8<\"$_Nsp\"; dd bs=1 skip={off} count=0 <&8 2>/dev/null; _Nfetch {nonce} {len}\n"
        ),
        None => format!("_Nfetch {nonce} {len}\n"),
    }
}

/// Closes the spool after a repair.
pub const FETCH_DONE: &str = "exec 8<&-\n";

/// What a command line is prefixed with to empty the spool.
pub const TRUNCATE_SPOOL: &str = ": >\"$_Nsp\"; ";

/// Size of the pieces [`encode_fetch`] asks for: well below what QEMU's side of the console
/// socket holds (about 100 KiB), so a piece cannot be dropped even if the driver stalls.
pub const FETCH_PIECE: usize = 65536;

/// The line that asks how many bytes the guest's copier has read so far.
pub fn encode_count(nonce: &[u8; NONCE_LEN]) -> String {
    format!(
        "_Ncount {}\n",
        std::str::from_utf8(nonce).unwrap_or("0000000000000000")
    )
}

/// How long a wait's loop may take to stop after the host told it to (an attempt may be
/// running) before the host kills it; also how long the fallback `timeout` lets a hanging
/// attempt run past the loop's own budget.
pub const WAIT_GRACE: Duration = Duration::from_millis(500);

/// Parameters of a guest-side wait loop.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WaitSpec {
    /// How long the wait may run: the host stops the loop once the machine had this much
    /// guest-available time (only a loop without the watchdog measures it itself).
    pub budget: Duration,
    /// The pause rule between attempts.
    pub pacing: Pacing,
}

/// The line that runs `check` repeatedly in the guest until it succeeds/fails or the host
/// stops it (the budget and the `timeout` wrapper of budget + grace only apply where the
/// watchdog is gone):
/// `_Nwait NONCE WRAPPER UNTIL BUDGET_US 'GUARD' 'COMMAND' FATAL 'PACING' 'UNIT' 'MODE'`.
pub fn encode_wait(
    nonce: &[u8; NONCE_LEN],
    check: &GuestCheck,
    spec: WaitSpec,
) -> Result<String, EncodeError> {
    let (unit, mode) = match &check.watch {
        None => ("", "u".to_owned()),
        Some(w) => (
            w.unit.as_str(),
            w.state
                .as_ref()
                .map_or_else(|| "u".to_owned(), |s| format!("s{s}")),
        ),
    };
    if [check.guard.as_str(), &check.command, unit, &mode]
        .iter()
        .any(|s| s.contains('\0'))
    {
        return Err(EncodeError::NulByte);
    }
    let nonce = std::str::from_utf8(nonce).unwrap_or("0000000000000000");
    let budget_us = micros(spec.budget);
    // The fallback `timeout` fires only if an attempt hangs past the loop's own deadline
    // (whole milliseconds: every byte is a read() in the guest).
    let wrapper = round_to_millis(spec.budget.saturating_add(WAIT_GRACE));
    let p = spec.pacing;
    let mut line = String::with_capacity(check.command.len() + check.guard.len() + 96);
    let _ = write!(
        line,
        "_Nwait {nonce} {} {} {budget_us} ",
        format_seconds(wrapper),
        if check.until_success { 0 } else { 1 }
    );
    shell_quote(&check.guard, &mut line);
    line.push(' ');
    shell_quote(&check.command, &mut line);
    let _ = write!(
        line,
        " {} '{} {} {} {} {} {} {} {} {} {} {} {} {}' ",
        check.fatal_status,
        p.age_us,
        p.min_us.max(1000),
        p.max_age_us.max(p.min_us).max(1000),
        p.age_divisor.max(1),
        p.young_us,
        p.young_factor,
        p.old_factor,
        p.watched_factor,
        p.own_cost_percent,
        p.overhead_us,
        u8::from(p.mode == PaceMode::Fast),
        p.probe_us,
        p.guard_max_us
    );
    shell_quote(unit, &mut line);
    line.push(' ');
    shell_quote(&mode, &mut line);
    line.push('\n');
    Ok(line)
}

/// `d` rounded to the nearest millisecond.
fn round_to_millis(d: Duration) -> Duration {
    let ms = (d.as_nanos() + 500_000) / 1_000_000;
    Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
}

#[cfg(test)]
#[path = "guest_tests.rs"]
mod tests;
