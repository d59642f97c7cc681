"""SIGTERM before Kopf runs: the replica ends cleanly, giving back the Lease it holds (the window after
it leads and before Kopf's own handler is in place: an e2e stop landed there once, under load)."""

from __future__ import annotations

import logging

import pytest
from clusterpki import runtime


class Elector:
    def __init__(self, leading: bool) -> None:
        self.leading, self.released = leading, []

    def release(self, timeout: float) -> bool:
        self.released.append(timeout)
        return self.leading


@pytest.mark.parametrize("leading, said", [(True, "Stopped before starting its work."),
                                           (False, "Stopped while standing by.")])
def test_a_stop_before_the_work_starts_gives_the_lease_back_and_exits_0(caplog, leading, said):
    elector = Elector(leading)
    with caplog.at_level(logging.INFO, logger="clusterpki.runtime"), pytest.raises(SystemExit) as ended:
        runtime._stop_before_work(elector)  # type: ignore[arg-type]
    assert ended.value.code == 0 and elector.released == [5]
    assert said in caplog.text
