"""Allocator settings for long CPU runs (detector.core.runtime): a conv pass reuses freed memory."""
import platform
import subprocess
import sys

import pytest

# Minor page faults of allocating and filling a 64 MB array again after freeing one of that size,
# each mode in a fresh process.  Without kept memory glibc unmaps the freed block and maps a fresh
# one: a first-touch fault per page (16384 of 4 KiB, or at least 32 where numpy gets 2 MB huge
# pages; 807 measured here); with it the block stays in the heap and is reused resident (0).  No count depends on what else the machine does: this host has no swap, so a resident
# page of the process is never taken away (the conv-pass version of this test counted the faults of
# torch's own allocations, which varied with load).
SCRIPT = """
import resource, sys
import numpy as np
from detector.core.runtime import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
for _ in range(2):
    block = np.ones(8_000_000)
    del block
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
block = np.ones(8_000_000)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults_of_a_reused_block(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True)
    return int(done.stdout.split()[-1])


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_keeping_freed_memory_reuses_a_large_block_without_page_faults():
    default, kept = faults_of_a_reused_block("default"), faults_of_a_reused_block("keep")
    assert default >= 32 and kept <= 2, (default, kept)


# Resident MiB before and after release_freed_memory, with every other ~16 MB block freed: holes
# between live blocks, none at the heap's top, so only a trim that reaches holes frees them.
TRIM_SCRIPT = """
import os
import numpy as np
from detector.core.runtime import keep_freed_memory, release_freed_memory
def resident_mib():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
assert keep_freed_memory()
blocks = [np.ones(2_000_000 + 1000 * i) for i in range(40)]
del blocks[::2]
before = resident_mib()
release_freed_memory()
print(before, resident_mib())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc and /proc only")
def test_release_freed_memory_hands_heap_holes_back():
    out = subprocess.run([sys.executable, "-c", TRIM_SCRIPT], capture_output=True, text=True, check=True)
    before, after = map(float, out.stdout.split())
    assert before - after > 0.8 * 20 * 16  # most of the 20 freed 16 MB blocks left the process


def test_releasing_freed_memory_yields_every_item_and_trims_every_hundred(monkeypatch):
    from detector.core import runtime
    calls = []
    monkeypatch.setattr(runtime, "release_freed_memory", lambda: calls.append(len(seen)))
    seen = []
    for item in runtime.releasing_freed_memory(range(250)):
        seen.append(item)
    assert seen == list(range(250)) and calls == [100, 200]


# Bytes in their own mappings (glibc mallinfo2.hblkhd) held by a live 64 MB array: kept heap,
# then inside mapping_large_blocks, then after it (kept heap again).
MAPPED_SCRIPT = """
import ctypes
import numpy as np
from detector.core.runtime import keep_freed_memory, mapping_large_blocks
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                               "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
def mapped_while_alive():
    before = libc.mallinfo2().hblkhd
    block = np.ones(8_000_000)
    return libc.mallinfo2().hblkhd - before
assert keep_freed_memory()
kept = mapped_while_alive()
with mapping_large_blocks(32 * 2**20):
    inside = mapped_while_alive()
print(kept, inside, mapped_while_alive())
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_mapping_large_blocks_maps_them_only_inside_the_block():
    out = subprocess.run([sys.executable, "-c", MAPPED_SCRIPT], capture_output=True, text=True, check=True)
    kept, inside, after = map(int, out.stdout.split())
    assert kept == 0 and inside >= 64_000_000 and after == 0, (kept, inside, after)


def test_atomic_outputs_get_the_usual_permissions(tmp_path):
    """Written through a temporary file (mkstemp: 0600), an output still gets 0666 less the umask."""
    import os

    from detector.core.io import write_text_atomic
    old = os.umask(0o027)
    try:
        write_text_atomic(tmp_path / "out.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "out.txt").stat().st_mode & 0o777 == 0o640
