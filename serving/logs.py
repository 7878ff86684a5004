"""Quiet by default: TensorFlow's native log noise filtered from stderr, everything shown with
``--verbose`` or ``FER_VERBOSE=1``, for ``fer-pipeline`` and ``fer-serve`` alike.

:func:`quiet_native_logs` drops the lines TensorFlow's C++ runtime writes to stderr that say
nothing a user can act on (no CUDA driver on a CPU machine, CPU instruction sets, oneDNN, a
graph attribute its own kernels do not know). It filters file descriptor 2, so subprocesses
(the pipeline's steps), which inherit it, are filtered too. Everything else (tracebacks,
real errors) passes.
"""

from __future__ import annotations

import atexit
import os
import re
import sys
import threading

VERBOSE_ENV = "FER_VERBOSE"
#: Native log lines that are noise on a machine without a GPU.
NOISE = re.compile(
    rb"failed call to cuInit|Could not find cuda drivers|cpu_feature_guard"
    rb"|To enable the following instructions|oneDNN custom operations|absl::InitializeLog"
    rb"|use_unbounded_threadpool|TF-TRT Warning|Unable to register cu(?:DNN|FFT|BLAS) factory"
    rb"|computation_placer\.cc.*already registered|TFRecordDataset `buffer_size` is unspecified"
    # MTCNN's refinement stages on a scale with no candidate boxes (an empty batch):
    rb"|Local rendezvous is aborting with status: INVALID_ARGUMENT: Incompatible shapes: \[0,")


def verbose_requested(flag: bool = False) -> bool:
    """Whether to show everything: the ``--verbose`` flag, or ``FER_VERBOSE`` set (not 0)."""
    return flag or os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def quiet_native_logs() -> None:
    """Filter file descriptor 2 through a thread that drops :data:`NOISE` lines, for the rest
    of the process (children inherit the filtered descriptor). Restored at exit, after the
    last lines are through."""
    sys.stderr.flush()
    read_end, write_end = os.pipe()
    real_stderr = os.dup(2)
    os.dup2(write_end, 2)
    os.close(write_end)

    def pump() -> None:
        with os.fdopen(read_end, "rb") as source:
            for line in source:
                if not NOISE.search(line):
                    os.write(real_stderr, line)

    thread = threading.Thread(target=pump, name="stderr-filter", daemon=True)
    thread.start()

    def restore() -> None:
        sys.stderr.flush()
        os.dup2(real_stderr, 2)  # closes our write end of the pipe: the pump drains and ends
        thread.join(timeout=2)

    atexit.register(restore)
