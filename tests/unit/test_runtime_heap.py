"""The operator gives its heap's free pages back after work, and never while it idles."""

from __future__ import annotations

import pytest
from clusterpki import runtime


class Stop(Exception):
    pass


def trims_over(cpu_at_each_look: list[float]) -> list[int]:
    """The trims made when the process's CPU time reads ``cpu_at_each_look`` (the first at the start)."""
    readings, trims = iter(cpu_at_each_look), []

    def cpu() -> float:
        try:
            return next(readings)
        except StopIteration:
            raise Stop() from None

    with pytest.raises(Stop):
        runtime.give_heap_back(lambda pad: trims.append(pad) or 1, cpu=cpu, sleep=lambda seconds: None)
    return trims


def test_a_second_of_work_is_followed_by_a_trim():
    # the start reads 0; a look at 0.2 s trims (and reads 0.21 after it); a look at 0.22 does not;
    # one at 0.4 does (0.19 since the last look)
    assert trims_over([0.0, 0.2, 0.21, 0.22, 0.22, 0.4, 0.41]) == [0, 0]


def test_an_idle_process_never_trims_however_long_it_idles():
    # 10 ms of work a second (bookmarks, probes) for a minute adds up to 0.6 s, never to a trim
    readings = [0.01 * look for look in range(61)]
    assert trims_over([r for r in readings for _ in (0, 1)][1:]) == []


def test_malloc_trim_is_found_in_this_process_s_c_library():
    trim = runtime.heap_trimmer()
    assert trim is not None  # glibc (Debian, as the image's base)
    assert trim(0) in (0, 1)  # 1 when pages were given back
