"""agents.transfer.upload_source: an agent fetches an upload from the hub
that holds it (the endpoints it offers), and only ever from one of its own
configured hubs."""
from __future__ import annotations

import pytest

from agents.transfer import upload_source
from dcctl import errors

A, B, C = "tcp://10.214.0.1:7100", "tcp://10.214.0.1:7101", "tcp://203.0.113.9:7100"


def test_the_offering_hub_wins_over_the_link_s_hub():
    assert upload_source([B], [A, B], A) == B
    assert upload_source(["ipc:///run/b.sock", B], [A, B], A) == B


def test_without_an_offer_the_link_s_hub():
    assert upload_source(None, [A, B], B) == B
    assert upload_source(None, [A, B], None) == A


def test_an_address_no_configured_hub_has_is_refused():
    with pytest.raises(errors.InvalidArgument, match="none of"):
        upload_source([C], [A, B], A)


def test_one_configured_hub_is_the_only_choice():
    assert upload_source([C], [A], A) == A


@pytest.mark.parametrize("offer", [[], "tcp://x:1", [1], [A] * 17])
def test_a_malformed_offer_is_refused(offer):
    with pytest.raises(errors.InvalidArgument):
        upload_source(offer, [A, B], A)


def test_no_hub_is_refused():
    with pytest.raises(errors.InvalidArgument, match="no hub"):
        upload_source([A], [], None)
