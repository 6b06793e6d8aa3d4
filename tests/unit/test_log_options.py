"""container_logs' options (dcctl.validate.log_options): --since as Unix
seconds or an age, never in the future; --tail in range; unknown options and
non-booleans refused, typed."""
from __future__ import annotations

import pytest

from dcctl import errors, validate

NOW = 1_800_000_000.0


@pytest.mark.parametrize("since,at", [("90s", NOW - 90), ("10m", NOW - 600), ("2h", NOW - 7200), ("1d", NOW - 86400),
                                      ("1.5m", NOW - 90), (1_700_000_000, 1_700_000_000.0), ("1700000000", 1.7e9),
                                      (NOW, NOW), ("0s", NOW)])
def test_since_takes_unix_seconds_or_an_age(since, at):
    assert validate.log_options({"since": since}, NOW)["since"] == at


@pytest.mark.parametrize("options", [{"since": NOW + 60}, {"since": "-5m"}, {"since": "soon"}, {"since": "5y"},
                                     {"since": True}, {"since": "nan"}, {"tail": -1}, {"tail": 100001},
                                     {"tail": 1.5}, {"follow": "yes"}, {"timestamps": 1}, {"colour": "red"}, []])
def test_bad_options_are_invalid_argument(options):
    with pytest.raises(errors.InvalidArgument):
        validate.log_options(options, NOW)


def test_defaults():
    assert validate.log_options(None, NOW) == {"follow": False, "timestamps": False, "since": None, "tail": None}
    assert validate.log_options({"tail": 0, "follow": True}, NOW)["tail"] == 0
