"""The app on the node: a managed process (`run:`), who holds the app port, and how a
failure or a success is described.

Everything here runs on the node as one POSIX sh script, `APP_SCRIPT`, sent as an argument
list like every command (the SSH transport quotes each argument): `sh -c APP_SCRIPT sh
<action> <state folder> ...`. It needs only POSIX tools (sh, awk, cat, ls, readlink, tr,
tail, wc) and `setsid` (util-linux or busybox); it uses `ss` where the node has it (a
cheaper look at the listening sockets) and never lsof or python, which a minimal node
may lack.

- `start`: unless something holds the app port (then it says who, and starts nothing),
  `setsid` makes the app the leader of its own session and process group, stdin
  /dev/null, stdout and stderr appended to `<state>/app.log`. The script waits until the
  new session exists, so the app is out of the command's process group (which both
  transports end with the command) before the command exits; it then outlives the
  command and the SSH session. Its pid goes to `<state>/app.pid` and its start time
  (from /proc, in clock ticks since boot) to `<state>/app.start`: a recycled pid is never
  taken for the app.
- `stop`: TERM to the app's process group, KILL after the grace if any of it is left.
- `probe`: is the recorded app running, and who holds a listening TCP socket on a port:
  `ss` (else /proc/net/tcp and tcp6) gives the listening sockets' inodes, the
  `socket:[inode]` links in /proc/*/fd their processes. A process of another user is not
  visible there ("hidden").
"""

import re

# Shared by the actions: `proc PID` reads /proc/PID/stat (fields after the command name,
# which may hold spaces or ')') into state, pgrp, sid, start; false if PID is gone or a
# zombie (whose sockets are closed already).
_FUNCTIONS = r"""
proc() {
  line=
  { read -r line < "/proc/$1/stat"; } 2>/dev/null
  [ -n "$line" ] || return 1
  set -- ${line##*") "}
  state=$1 pgrp=$3 sid=$4
  eval "start=\${20}"
  [ "$state" != Z ]
}
ours() {
  pid= saved=
  { read -r pid < "$state_dir/app.pid"; read -r saved < "$state_dir/app.start"; } 2>/dev/null
  [ -n "$pid" ] && proc "$pid" && [ "$start" = "$saved" ]
}
in_group() {
  g=$1
  proc "$g" && return 0
  # One awk over every process's stat: sh's `read` takes a file a byte per system call,
  # which on a busy node (hundreds of processes) cost tenths of a CPU second per look.
  cat /proc/[0-9]*/stat 2>/dev/null | awk -v g="$g" '
    { sub(/^.*\) /, ""); if ($3 == g && $1 != "Z") { found = 1; exit } }
    END { exit !found }'
}
wait_gone() {
  # Looks every 0.02 s (an app usually ends within a few after TERM); $2 is in tenths.
  n=0
  while in_group "$1"; do
    [ "$n" -lt $(($2 * 5)) ] || return 1
    sleep 0.02 2>/dev/null || { sleep 1; n=$((n + 49)); }
    n=$((n + 1))
  done
  waited=$((n / 5))
}
holder() {
  proc "$1" || return 0
  # tr writes straight after printf: no subshell to capture it.
  printf 'holder %s %s ' "$1" "$sid"
  tr '\0\n' '  ' < "/proc/$1/cmdline" 2>/dev/null
  echo
}
# The processes of `ls -l` listings (from stdin) holding one of $inodes, once each.
socket_pids() {
  awk -v inodes="$inodes" '
    /^\/proc\/[0-9]+\/fd:$/ { p = $0; sub(/^\/proc\//, "", p); sub(/\/fd:$/, "", p); next }
    / -> socket:\[[0-9]+\]$/ {
      s = $NF; gsub(/[^0-9]/, "", s)
      if (index(inodes, " " s " ") && !(p in seen)) { seen[p] = 1; print p }
    }'
}
# `listening PORT`: the inodes of the TCP sockets listening on PORT, as " i1 i2 " (" ":
# none); false if this node cannot tell. With ss (iproute2) the kernel lists only the
# listening sockets; /proc/net/tcp also lists every connection on the host, TIME_WAIT
# ones included, which cost a busy host most of each look.
listening() {
  if listed=$(ss -Hltne "sport = :$1" 2>/dev/null); then
    printf '%s\n' "$listed" | awk '
      { for (i = 1; i <= NF; i++) if ($i ~ /^ino:[0-9]+$/) printf " %s", substr($i, 5) }
      END { printf " " }'
    return 0
  fi
  tables=
  for table in /proc/net/tcp /proc/net/tcp6; do [ -r "$table" ] && tables="$tables $table"; done
  [ -n "$tables" ] || return 1
  # awk, not sh's `read` (a system call per byte): a busy host lists hundreds of sockets.
  # Listening (state 0A) on the port -> the socket's inode (field 10).
  awk -v port="$1" 'BEGIN { want = sprintf(":%04X", port) }
    $4 == "0A" && substr($2, length($2) - 4) == want { printf " %s", $10 }
    END { printf " " }' $tables
}
# `holders PORT [APP_PID]`: who listens on PORT.
holders() {
  inodes=$(listening "$1") || { echo "port unknown"; return 0; }
  [ "$inodes" != " " ] || { echo "port free"; return 0; }
  echo "port held"
  # Usually the app Trainyard started holds every listener: its own descriptors say so
  # without listing every process's on the node (thousands on a busy one).
  if [ -n "$2" ] && LC_ALL=C ls -l "/proc/$2/fd" 2>/dev/null | awk -v inodes="$inodes" '
      / -> socket:\[[0-9]+\]$/ { s = $NF; gsub(/[^0-9]/, "", s)
                                  if (index(inodes, " " s " ")) n[s] = 1 }
      END { c = 0; for (k in n) c++; exit !(c == split(inodes, all, " ")) }'; then
    holder "$2"
    return 0
  fi
  LC_ALL=C QUOTING_STYLE=literal ls -l /proc/[0-9]*/fd 2>/dev/null | socket_pids |
    while read -r p; do holder "$p"; done
}
"""

_ACTIONS = r"""
action=$1 state_dir=$2
shift 2
case $action in
start)
  if ! command -v setsid > /dev/null 2>&1; then
    echo "setsid is not installed on the node (util-linux or busybox has it)"; exit 127
  fi
  [ -d "$state_dir" ] || mkdir -p -- "$state_dir" || exit 1
  port=$1
  shift
  if [ "$port" != - ]; then
    held=$(holders "$port")
    echo "$held"
    case $held in "port held"*) exit 0 ;; esac
  fi
  log=$state_dir/app.log
  if [ -f "$log" ] && [ "$(wc -c < "$log")" -gt 5242880 ]; then mv -f -- "$log" "$log.1"; fi
  { printf '[trainyard] %s starting in %s:' "$(date -u '+%Y-%m-%d %H:%M:%S UTC')" "$(pwd -P)"
    printf ' %s' "$@"; echo; } >> "$log"
  setsid "$@" < /dev/null >> "$log" 2>&1 &
  pid=$! n=0
  until proc "$pid" && [ "$sid" = "$pid" ]; do
    if ! proc "$pid"; then wait "$pid"; echo "exited $pid $?"; exit 0; fi
    n=$((n + 1))
    [ "$n" -lt 1000 ] || { echo "nosession $pid"; exit 1; }
    sleep 0.01 2>/dev/null || sleep 1
  done
  printf '%s\n' "$start" > "$state_dir/app.start" && printf '%s\n' "$pid" > "$state_dir/app.pid" || exit 1
  echo "started $pid" ;;
stop)
  if ! ours; then
    rm -f -- "$state_dir/app.pid" "$state_dir/app.start"
    echo "none $pid"; exit 0
  fi
  kill -s TERM -- "-$pid" 2> /dev/null
  if wait_gone "$pid" $(($1 * 10)); then
    echo "stopped $pid $waited"
  else
    kill -s KILL -- "-$pid" 2> /dev/null
    wait_gone "$pid" 50 || { echo "pid $pid is still running 5s after KILL"; exit 1; }
    echo "killed $pid"
  fi
  rm -f -- "$state_dir/app.pid" "$state_dir/app.start" ;;
probe)
  if ours; then echo "app running $pid"; mine=$pid; else echo "app gone $pid"; mine=; fi
  [ "$1" = - ] || holders "$1" $mine ;;
tail)
  [ -f "$state_dir/app.log" ] && tail -n "$1" -- "$state_dir/app.log"
  exit 0 ;;
esac
"""

APP_SCRIPT = _FUNCTIONS + _ACTIONS
SCRIPT_NAME = "<the app script of nodes/deploy/app.py>"
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CMD_SHOWN = 120


def printable(text, *, keep_newlines=False):
    """`text` with control characters shown escaped: nothing from a node or a spec may
    move a terminal's cursor or change its colours when a log is printed."""
    def escape(match):
        char = match.group()
        return char if keep_newlines and char == "\n" else repr(char)[1:-1]

    return _CONTROL.sub(escape, text)


class Holder:
    """A process holding a listening socket on the app port."""

    def __init__(self, pid, sid, command):
        self.pid, self.sid, self.command = pid, sid, command

    def __str__(self):
        command = printable(self.command.strip())
        if len(command) > _CMD_SHOWN:
            command = command[:_CMD_SHOWN] + "…"
        return f"pid {self.pid} ({command})" if command else f"pid {self.pid}"


class Probe:
    """What the `probe` action saw: the recorded app and the port's listeners."""

    def __init__(self, output):
        self.app_pid, self.app_running = None, False
        self.port = "unknown"  # free, held or unknown (no /proc/net/tcp on the node)
        self.holders = []
        for line in output.splitlines():
            word, _, rest = line.partition(" ")
            if word == "app":
                state, _, pid = rest.partition(" ")
                self.app_running = state == "running"
                self.app_pid = int(pid) if pid.isdigit() else None
            elif word == "port":
                self.port = rest.strip()
            elif word == "holder":
                pid, sid, command = (rest.split(" ", 2) + ["", ""])[:3]
                if pid.isdigit():
                    self.holders.append(Holder(int(pid), sid, command))

    @property
    def hidden(self):
        """A listener whose process this user cannot see (another user's)."""
        return self.port == "held" and not self.holders

    def foreign(self, session):
        """Holders outside the session `session` (a pid, or None: all of them)."""
        return [h for h in self.holders if session is None or h.sid != str(session)]

    def describe_holders(self, holders=None):
        holders = self.holders if holders is None else holders
        if self.hidden:
            return "a process Trainyard cannot see (another user's?)"
        return ", ".join(str(h) for h in holders)

    def pids(self):
        return {h.pid for h in self.holders}
