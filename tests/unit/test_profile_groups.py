"""make profile's grouping of perf samples (tests/benchmarks/profile_server.py)."""

from __future__ import annotations

from tests.benchmarks.profile_server import group_samples

# `perf script -F tid,ip,sym,dso`: a thread line, then the stack from the sampled frame out.
SCRIPT = """\
  4242
\t    7f01 json_string+0x10 (/x/_native.cpython-311-x86_64-linux-gnu.so)
\t    7f02 process_event+0x20 (/x/_native.cpython-311-x86_64-linux-gnu.so)

  4242
\t    7f03 read_string+0x8 (/x/_native.cpython-311-x86_64-linux-gnu.so)

  4242
\t    ff01 copy_folio_from_iter_atomic+0x1 ([kernel.kallsyms])
\t    ff02 do_writev+0x1 ([kernel.kallsyms])
\t    7f04 writev+0x1 (/usr/lib/x86_64-linux-gnu/libc.so.6)

  4243
\t    ff03 finish_task_switch.isra.0+0x1 ([kernel.kallsyms])
\t    ff04 __schedule+0x1 ([kernel.kallsyms])
\t    ff05 do_fsync+0x1 ([kernel.kallsyms])

  4242
\t    7f05 _PyEval_EvalFrameDefault+0x1 (/x/libpython3.11.so.1.0)

  4244
\t    ff06 eventfd_write+0x1 ([kernel.kallsyms])
\t    ff07 vfs_write+0x1 ([kernel.kallsyms])
\t    ff08 ksys_write+0x1 ([kernel.kallsyms])

  4244
\t    ff09 unix_stream_sendmsg+0x1 ([kernel.kallsyms])
\t    ff0a sock_write_iter+0x1 ([kernel.kallsyms])

  4244
\t    ff0b tcp_sendmsg_locked+0x1 ([kernel.kallsyms])
\t    ff0c __sys_sendmsg+0x1 ([kernel.kallsyms])

  4242
\t    7f06 keys_of_lines+0x1 (/x/_native.cpython-311-x86_64-linux-gnu.so)

  4242
"""


def test_each_sample_counts_for_the_first_group_its_stack_matches() -> None:
    counts = group_samples(SCRIPT)
    assert counts == {
        "the native pass": 2,  # by a frame of the pass; by the library of its own frame
        "the file write": 1,
        "fsync": 1,  # a switch inside fsync is fsync's (GROUPS order)
        "CPython: interpreter, objects, GIL": 1,
        "wakeups (eventfd, self-pipe)": 2,  # write(2) that is not the file write
        "socket send": 1,
        "dedupe (IdSet)": 1,
        "other": 1,  # a sample without frames
    }
