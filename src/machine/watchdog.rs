//! The guest's command watchdog: the bash coprocess ([`SETUP_TIMEOUTS`]) through which the
//! host ends a timed command or wait and tells a wait how to pace, and the messages it
//! understands ([`HostMessage`]). Pure text; [`super::guest`] sends it.

/// Sent in front of the first timed command: fds 6/7 become a watchdog coprocess through
/// which **the host ends timed requests**, so that their timeouts count the time the guest
/// could run (the host's view, [`crate::hostcpu`]), not the guest's clock (under TCG the
/// guest's clock runs on while the host withholds its CPU).
///
/// A timed request (a command with a timeout, a wait) runs in a subshell that first writes
/// its pid to fd 6 (it *arms* the watchdog). From then until the host *releases* it, the
/// watchdog is the only reader of the console (fd 9, a copy of the shell's stdin): the
/// shell itself is waiting for the subshell and reads no command. The host's messages
/// during a request ([`HostMessage`]) are lines of blanks, so that a stray one could never
/// change a command line (blank lines are nothing to bash); the release is an empty line,
/// which the host sends right after the request's end marker. The watchdog reads the
/// console with `mapfile -n 1`, one byte per `read()` and without touching the terminal's
/// modes: bash's `read` builtin either reads a console ahead in blocks (it would swallow the
/// next command) or, with `-n`/`-N`/`-d`, switches the console to cbreak mode with output
/// processing while it waits (command output would gain carriage returns). The watchdog
/// turns the messages into lines on fd 7: `f`/`b` (pace fast / by the budget; the wait loop reads
/// them during its pauses), `s` (stop: the wait loop ends as "not yet"), `k` (kill: the
/// watchdog SIGTERMs the subshell and all its descendants; the status becomes 124, like
/// `timeout`'s) and `r` when released. The shell prints the end marker, then reads fd 7 up
/// to `r`, and only then reads its next command: host bytes never mix with commands. Should
/// the watchdog be gone, `timeout` is exec'd instead (which counts the guest's clock).
/// A command whose background processes keep its stdout open is waited for (`__ntd_stdout`,
/// see [`super::guest::SETUP`]) before the end marker: with the watchdog, until they close it or the host's
/// `k` ends the wait (status 124, the holders SIGTERMed); without it, until the guest's clock
/// passes the timeout.
pub const SETUP_TIMEOUTS: &str = r#"__ntd_kill() {
  local __ntd_all=("$1") __ntd_i=0 __ntd_f __ntd_k
  while (( __ntd_i < ${#__ntd_all[@]} )); do
    for __ntd_f in /proc/${__ntd_all[__ntd_i]}/task/*/children; do
      __ntd_k=()
      # The file has no trailing newline, so read reports EOF but fills the array.
      [[ -r $__ntd_f ]] && { read -r -a __ntd_k < "$__ntd_f" || :; }
      __ntd_all+=("${__ntd_k[@]}")
    done
    __ntd_i=$(( __ntd_i + 1 ))
  done
  kill -TERM "${__ntd_all[@]}" 2>/dev/null
}
__ntd_watch() {
  local __ntd_p
  local -a __ntd_a
  while read -r __ntd_p; do
    while mapfile -t -n 1 -u 9 __ntd_a && (( ${#__ntd_a[@]} )); do
      case ${__ntd_a[0]} in
        '') break ;;
        ' ') printf 'f\n' ;;
        '  ') printf 'b\n' ;;
        $'\t') printf 's\n' ;;
        $'\t\t') printf 'k\n'; __ntd_kill "$__ntd_p" ;;
      esac
    done
    printf 'r\n'
  done
}
{ coproc __ntd_wd { __ntd_watch; }; } 9<&0
exec 6>&"${__ntd_wd[1]}" 7<&"${__ntd_wd[0]}"
__ntd_fired() {
  local __ntd_x
  while read -t 0 -u 7 && read -r -u 7 __ntd_x; do [[ $__ntd_x == k ]] && __ntd_s=124; done
}
__ntd_rel() {
  local __ntd_x
  while read -r -u 7 __ntd_x && [[ $__ntd_x != r ]]; do :; done
}
__ntd_rt() {
  local __ntd_t1=${EPOCHREALTIME/./}
  if kill -0 "$__ntd_wd_PID" 2>/dev/null; then
    ( printf '%s\n' "$BASHPID" >&6; exec 6>&- 7<&-; eval "set -euo pipefail; $__ntd_c" ) <&5 >&3 3>&- 5<&-
    __ntd_s=$?
    __ntd_stdout
    __ntd_fired
    printf '\001E%s %d\001' "$__ntd_n" "$__ntd_s" >&3
    __ntd_rel
  else
    ( exec timeout "$__ntd_t" bash -c "set -euo pipefail; $__ntd_c" ) <&5 >&3 3>&- 5<&- 6>&- 7<&-
    __ntd_s=$?
    __ntd_stdout "$__ntd_t1" "$__ntd_t"
    printf '\001E%s %d\001' "$__ntd_n" "$__ntd_s" >&3
  fi
}
__ntd_stdout() {
  if read -r __ntd_q __ntd_q __ntd_q __ntd_q __ntd_q </proc/loadavg; then
    (( __ntd_q - __ntd_pl == 1 )) || __ntd_new "$@" || __ntd_s=124
    __ntd_pl=$__ntd_q
  fi
}
"#;

/// What the host tells a timed request while it runs (see [`SETUP_TIMEOUTS`]): a line of
/// blanks each; [`HostMessage::RELEASE`], an empty line, ends the request's conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostMessage {
    /// The host has idle CPU: pace by the fast rule.
    PaceFast,
    /// The host is contended: pace by the CPU budget.
    PaceBudget,
    /// The wait's time is up: end the loop as "not yet".
    Stop,
    /// The request's time is up: kill it (status 124).
    Kill,
}

impl HostMessage {
    /// The line that releases the watchdog after a timed request's end marker.
    pub const RELEASE: u8 = b'\n';

    pub fn bytes(self) -> &'static [u8] {
        match self {
            HostMessage::PaceFast => b" \n",
            HostMessage::PaceBudget => b"  \n",
            HostMessage::Stop => b"\t\n",
            HostMessage::Kill => b"\t\t\n",
        }
    }
}
