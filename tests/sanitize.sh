#!/usr/bin/env bash
# The test suite against stud's C extensions (stud/_flow.c, _sesscache.c, _ticketkeys.c) built with
# AddressSanitizer (+ LeakSanitizer), then with UndefinedBehaviorSanitizer.
#
#   bash tests/sanitize.sh [--asan-only | --ubsan-only] [--keep] [PYTEST ARGS...]
#
# Each sanitizer gets a private copy of the working tree (tracked and untracked files, as they
# are now), built there: the in-place .so files of this tree are never touched, and the run is
# of one version even while someone edits the tree. The runtime is preloaded into the
# interpreter, so every process the tests start (pytest itself, the stud masters and the
# workers they fork, the bench) runs the instrumented extensions and writes its reports to a
# file of its own (log_path: one per PID). Two builds because with both runtimes preloaded
# UBSan reports go to stderr only, and a worker's are lost.
#
# What counts as a report:
#   - ASan: every error (overflow, use after free, double free, a deadly signal...);
#   - LSan: a leaked block whose allocation stack has a frame in one of them.
#     CPython frees little at exit and, with PYTHONMALLOC=malloc (so that ASan sees Python's
#     allocations), all of that is reported; it is not ours. LeakSanitizer's own check at exit
#     is off (it makes the exit status 1 wherever CPython leaked, and the tests check exit
#     statuses); the sitecustomize written below runs the recoverable check instead, at exit
#     and in os._exit, which stud's workers end with (not in a chroot, where LSan cannot
#     work). Limits: a block reachable from a live object is not a leak to LSan (a lost
#     reference to a GC-tracked object never is: the collector still links it;
#     tests/test_conn.py counts references for that), and the fast unwinder cannot walk
#     through CPython (no frame pointers), so an object that a method called straight from
#     Python makes through a CPython API may be attributed to CPython alone (exact unwinding
#     costs 10x the run time); memory that _flow.c allocates with PyMem_Malloc, or through a
#     helper of its own, names _flow.c;
#   - UBSan: every "runtime error" (only the extensions are instrumented).
# Exits non-zero on any report or failed test; prints one summary line otherwise. The work
# directory (trees, logs, JUnit XML) is removed after a clean run, kept otherwise.
#
# Environment: SANITIZE_TIMEOUT (seconds per test-suite run, default 5400).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
# The interpreter itself, not a wrapper script (pyenv's python3 is a bash script, and every
# process started under the preload is one more report file).
PY=$(python3 -c 'import sys; print(sys.executable)')
SUITE_TIMEOUT=${SANITIZE_TIMEOUT:-5400}
OURS='(_flow|_sesscache|_ticketkeys)(\.c\b|\.cpython-)'

kinds=(asan ubsan)
keep=0
pytest_args=()
for arg in "$@"; do
  case $arg in
    --asan-only) kinds=(asan) ;;
    --ubsan-only) kinds=(ubsan) ;;
    --keep) keep=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) pytest_args+=("$arg") ;;
  esac
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/stud-sanitize.XXXXXX")
clean=0
# shellcheck disable=SC2317  # run by the EXIT trap
finish() {
  if [ "$clean" = 1 ] && [ "$keep" = 0 ]; then
    rm -rf "$WORK"
  else
    echo "sanitize: work directory kept: $WORK" >&2
  fi
}
trap finish EXIT

die() {
  echo "sanitize: $*" >&2
  exit 2
}

flags_for() {
  case $1 in
    asan) echo "-fsanitize=address -fsanitize-recover=address -fno-omit-frame-pointer -g -O1" ;;
    ubsan) echo "-fsanitize=undefined -fno-omit-frame-pointer -g -O1" ;;
  esac
}

runtime_for() {
  local lib
  lib=$(gcc -print-file-name="lib$1.so")
  [ -e "$lib" ] || die "gcc has no lib$1.so (install its sanitizer runtime)"
  readlink -f "$lib"
}

copy_tree() {  # the working tree as it is now: tracked and untracked files, not ignored ones
  local dest=$1 f
  mkdir -p "$dest"
  git -C "$ROOT" ls-files -z --cached --others --exclude-standard |
    while IFS= read -r -d '' f; do
      # tracked files someone has just deleted are listed but gone
      if [ -e "$ROOT/$f" ]; then printf '%s\0' "$f"; fi
    done | (cd "$ROOT" && xargs -0 -r cp -P --parents -t "$dest")
}

build() {  # build KIND TREE: both extensions, instrumented, in TREE; checks that they are
  local kind=$1 tree=$2 flags runtime soname so opt syms
  flags=$(flags_for "$kind")
  runtime=$(runtime_for "$kind")
  soname=$(readelf -d "$runtime" | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')
  # setup.py's own -O2 comes after CFLAGS and would win; -O1 keeps reports close to the source
  sed -i 's/"-O2"/"-O1"/' "$tree/setup.py"
  (cd "$tree" && CFLAGS="$flags" LDFLAGS="${flags%% *}" \
     timeout 600 "$PY" setup.py -q build_ext --inplace >"$WORK/$kind/build.log" 2>&1) ||
    { tail -30 "$WORK/$kind/build.log" >&2; die "$kind build failed"; }
  local sym=__asan_report_store
  [ "$kind" = ubsan ] && sym=__ubsan_handle_
  for name in _flow _sesscache _ticketkeys; do
    # setup.py builds them as optional: a failed build would silently test the pure-Python path
    so=$(compgen -G "$tree/stud/$name.cpython-*.so") || die "$kind: stud/$name was not built"
    # whole outputs first: grep -q would stop reading, and pipefail see the writer's SIGPIPE
    syms=$(nm -D --undefined-only "$so")
    grep "$sym" >/dev/null <<<"$syms" || die "$kind: $so calls no $sym*: not instrumented"
    grep "NEEDED.*\[$soname\]" >/dev/null <<<"$(readelf -d "$so")" ||
      die "$kind: $so is not linked with $soname, the runtime preloaded"
    opt=$(readelf --debug-dump=info "$so" | grep DW_AT_producer | grep -o -- '-O[0-3s]\b' |
      tail -1)
    [ "$opt" = -O1 ] ||
      echo "sanitize: $kind: $name built with ${opt:-no -O} last, not -O1 (setup.py changed?)" >&2
  done
}

write_sitecustomize() {  # see the leak rule above
  mkdir -p "$WORK/site"
  cat >"$WORK/site/sitecustomize.py" <<'EOF'
"""Written by tests/sanitize.sh, first on PYTHONPATH in its AddressSanitizer run only.

LeakSanitizer's check at exit is off there (it would change the exit status of every process
CPython leaks in); a process that loaded stud's extensions runs the recoverable check instead,
which reports without touching the exit status, when it exits and when it calls os._exit
(stud's workers end with it, which skips every exit handler)."""

import os
import sys


def _install() -> None:
    if "libasan" not in os.environ.get("LD_PRELOAD", ""):
        return  # started without the runtime, as the tests start external tools
    import atexit
    import ctypes

    try:
        check = ctypes.CDLL(None)["__lsan_do_recoverable_leak_check"]
    except AttributeError:
        return
    real_exit = os._exit

    def leak_check() -> None:
        # Without /proc (a worker in --chroot) LSan cannot list the threads to stop: it spins.
        if any(f"stud.{m}" in sys.modules for m in ("_flow", "_sesscache", "_ticketkeys")) and \
                os.path.isdir("/proc/self/task"):
            check()

    def _exit(code: int) -> None:
        leak_check()
        real_exit(code)

    os._exit = _exit
    atexit.register(leak_check)  # registered first, so it runs after every other handler


_install()
EOF
}

sanitizer_env() {  # sanitizer_env KIND TREE LOGDIR: the environment of every run of KIND
  local kind=$1 tree=$2 logs=$3
  echo "LD_PRELOAD=$(runtime_for "$kind")"
  echo "STUD_SANITIZER=$kind"  # tests/helpers.py: the few bounds a sanitizer changes
  if [ "$kind" = asan ]; then
    echo "PYTHONPATH=$tree:$WORK/site"
    echo "PYTHONMALLOC=malloc"
    echo "ASAN_OPTIONS=halt_on_error=0:log_path=$logs/asan:detect_leaks=1:leak_check_at_exit=0:$(
      )detect_stack_use_after_return=1:strip_path_prefix=$tree/"
  else
    echo "PYTHONPATH=$tree"
    echo "UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=0:log_path=$logs/ubsan:$(
      )strip_path_prefix=$tree/"
  fi
}

scan() {  # scan KIND LOGDIR PATTERN: prints the reports (PATTERN: our leak frames); their count
  "$PY" - "$@" <<'EOF'
import re
import sys
from pathlib import Path

kind, logdir, ours = sys.argv[1], Path(sys.argv[2]), re.compile(sys.argv[3])
frame = re.compile(r"^\s+#\d+ ", re.M)
reports, ignored, other = [], 0, []
for f in sorted(logdir.glob(f"{kind}.*"), key=lambda p: p.stat().st_mtime):
    text = f.read_text(errors="replace")
    if kind == "ubsan":
        for block in re.split(r"(?m)^(?=\S.*: runtime error: )", text):
            if ": runtime error: " in block:
                reports.append((f, block))
            elif block.strip():
                other.append((f, block))
        continue
    for block in re.split(r"(?m)^=+$", text):
        if "ERROR: LeakSanitizer" in block:
            for leak in re.split(r"(?m)^(?=(?:Direct|Indirect) leak)", block)[1:]:
                stack = "".join(ln for ln in leak.splitlines(True) if frame.match(ln))
                if ours.search(stack):
                    reports.append((f, leak))
                else:
                    ignored += 1
        elif "ERROR: " in block or "runtime error" in block or "CHECK failed" in block:
            reports.append((f, block))
        elif block.strip():
            other.append((f, block))
for f, block in reports:
    lines = block.strip().splitlines()
    print(f"--- {f}\n" + "\n".join(lines[:40]) + ("\n    [...]" if len(lines) > 40 else ""))
for f, block in other[:5]:
    print(f"--- {f} (not a report)\n" + "\n".join(block.strip().splitlines()[:5]))
if ignored:
    print(f"({ignored} leak reports without a frame of ours ignored: CPython's)")
print(len(reports))
EOF
}

probe() {  # probe KIND TREE: proves that a forked child's report reaches its file and counts
  local kind=$1 tree=$2 dir=$WORK/$1/probe include
  mkdir -p "$dir/logs"
  include=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
  cat >"$dir/probe.c" <<'EOF'
#include <Python.h>

int probe_overflow(int n) {     /* ASan: a write one byte past a heap block */
    volatile char *p = malloc((size_t)n);
    p[n] = 1;
    free((void *)p);
    return 0;
}

int probe_leak(int n) {         /* LSan: a block from CPython's allocator, lost */
    return PyMem_Malloc((size_t)n) != NULL;
}

int probe_ub(int n) {           /* UBSan: a signed overflow */
    volatile int big = 2147483647;
    return big + n;
}
EOF
  # shellcheck disable=SC2046  # the flags are words
  gcc -shared -fPIC $(flags_for "$kind") -I"$include" -o "$dir/probe.so" "$dir/probe.c"
  cat >"$dir/probe.py" <<'EOF'
import ctypes
import os
import sys

import stud._flow
import stud._sesscache
import stud._ticketkeys

tree, kind = sys.argv[1], sys.argv[2]
for mod in (stud._flow, stud._sesscache, stud._ticketkeys):
    assert mod.__file__.startswith(tree + "/"), f"{mod.__file__} is not the build under test"
lib = ctypes.PyDLL(os.path.join(os.path.dirname(sys.argv[0]), "probe.so"))
pid = os.fork()
if pid == 0:  # as a stud worker is: forked, and it ends with os._exit
    if kind == "asan":
        lib.probe_overflow(8)
        lib.probe_leak(24)
    else:
        lib.probe_ub(1)
    os._exit(0)
_, status = os.waitpid(pid, 0)
print(pid, os.waitstatus_to_exitcode(status))
EOF
  local env out pid code found
  mapfile -t env < <(sanitizer_env "$kind" "$tree" "$dir/logs")
  out=$(cd "$tree" && env "${env[@]}" timeout 120 "$PY" "$dir/probe.py" "$tree" "$kind") ||
    die "$kind probe did not run: $out"
  read -r pid code <<<"$out"
  [ "$code" = 0 ] || die "$kind probe: the child exited with $code"
  found=$(scan "$kind" "$dir/logs" 'probe\.c' | tail -1)
  local want=1
  [ "$kind" = asan ] && want=2  # the overflow and the leak
  if [ ! -e "$dir/logs/$kind.$pid" ] || [ "$found" != "$want" ]; then
    die "$kind probe: expected $want reports from the forked child $pid in $dir/logs, got" \
      "${found:-none}: the run could not fail"
  fi
}

junit_counts() {  # junit_counts FILE: tests run (not skipped), tests failed
  "$PY" - "$1" <<'EOF'
import sys
import xml.etree.ElementTree as ET

s = ET.parse(sys.argv[1]).getroot()
s = s if s.tag == "testsuite" else s.find("testsuite")
print(int(s.get("tests")) - int(s.get("skipped")), int(s.get("failures")) + int(s.get("errors")))
EOF
}

run_suite() {  # run_suite KIND TREE: the test suite; sets tests, failed, reports, seconds
  local kind=$1 tree=$2 logs=$WORK/$1/logs env rc=0 t0
  mkdir -p "$logs"
  # workers run as nobody with --user: a report they cannot write kills them instead
  chmod 755 "$WORK" "$WORK/$kind" && chmod 1777 "$logs"
  mapfile -t env < <(sanitizer_env "$kind" "$tree" "$logs")
  t0=$(date +%s)
  (cd "$tree" && env "${env[@]}" timeout -k 60 "$SUITE_TIMEOUT" "$PY" -m pytest -q \
     -p no:cacheprovider --junitxml="$WORK/$kind/junit.xml" ${pytest_args[@]+"${pytest_args[@]}"}) ||
    rc=$?
  seconds=$(($(date +%s) - t0))
  [ "$rc" = 124 ] && echo "sanitize: $kind: the test suite timed out after $SUITE_TIMEOUT s" >&2
  read -r tests failed < <(junit_counts "$WORK/$kind/junit.xml" || echo "0 ?")
  [ "$rc" = 0 ] || [ "$failed" != 0 ] || failed="pytest exit status $rc"
  echo "== $kind reports ($logs)"
  local out
  out=$(scan "$kind" "$logs" "$OURS")
  reports=$(tail -1 <<<"$out")
  sed '$d' <<<"$out"
}

summary=()
status=0
for kind in "${kinds[@]}"; do
  mkdir -p "$WORK/$kind"
  tree=$WORK/$kind/tree
  echo "== $kind: copying the tree and building the extensions with $(flags_for "$kind")"
  copy_tree "$tree"
  build "$kind" "$tree"
  [ "$kind" = asan ] && write_sitecustomize
  probe "$kind" "$tree"
  echo "== $kind: instrumented, and a forked child's report counts; running the tests"
  run_suite "$kind" "$tree"
  name=$([ "$kind" = asan ] && echo ASan || echo UBSan)
  line="$name: $tests tests, $reports reports"
  [ "$failed" = 0 ] || line+=", FAILED: $failed"
  summary+=("$line (${seconds} s)")
  if [ "$reports" != 0 ] || [ "$failed" != 0 ]; then status=1; fi
done

[ "$status" = 0 ] && clean=1
line=""
for part in "${summary[@]}"; do line+="${line:+; }$part"; done
echo "$line"
exit "$status"
