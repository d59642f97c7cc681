from datetime import timedelta

import pytest
from clusterpki.pki import durations


@pytest.mark.parametrize("text, expected", [
    ("90s", timedelta(seconds=90)),
    ("2m", timedelta(minutes=2)),
    ("8760h", timedelta(hours=8760)),
    ("1h30m", timedelta(hours=1, minutes=30)),
    ("1.5h", timedelta(minutes=90)),
    ("500ms", timedelta(milliseconds=500)),
])
def test_parses_go_durations(text, expected):
    assert durations.parse(text) == expected


@pytest.mark.parametrize("text", ["", "90", "1d", "-5m", "h", "5 m", 90, None])
def test_rejects_what_go_rejects(text):
    with pytest.raises(ValueError, match="is not a duration"):
        durations.parse(text)


def test_formats_like_go():
    assert durations.format_go(timedelta(hours=8760)) == "8760h0m0s"
    assert durations.format_go(timedelta(seconds=90)) == "1m30s"
    assert durations.format_go(timedelta(seconds=5)) == "5s"


@pytest.mark.parametrize("delta, text", [
    (timedelta(seconds=-1), "<invalid>"),
    (timedelta(seconds=45), "45s"),
    (timedelta(minutes=30), "30m"),
    (timedelta(hours=5), "5h"),
    (timedelta(days=364), "364d"),
    (timedelta(days=3650), "10y"),
])
def test_short_form_for_residual_time(delta, text):
    assert durations.format_short(delta) == text
