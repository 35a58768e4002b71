"""Versions stamped in the log and snapshots, and upcasters reading older
versions (docs/migrations.md); every test on both cores. Fixtures are
written at v1 by code with no migrations, then read by v2 and v3 code."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import rehydrate as rh
from rehydrate import ConfigError, CorruptionError, Migrations, Store


def _v1_log(path, n=50, checkpoint_at=None):
    with Store.open(path) as s:
        for i in range(n):
            s.put("prices", i, {"cents": 100 * i})
            if checkpoint_at == i:
                s.checkpoint()
        s.delete("prices", 0)
        s.put("plain", "k", "no upcaster here")


def _v2():
    mig = Migrations()

    @mig.upcaster("prices", from_version=1)
    def cents_to_amount(v):
        return {"amount": v["cents"] / 100, "currency": "EUR"}

    return mig


def _v3():
    mig = _v2()

    @mig.upcaster("prices", from_version=2)
    def add_tax(v):
        return dict(v, tax=0.2)

    return mig


@pytest.mark.parametrize("checkpoint_at", [None, 20, 49])
def test_v1_records_and_snapshots_read_under_v2_and_v3(store_dir, checkpoint_at):
    _v1_log(store_dir, checkpoint_at=checkpoint_at)
    with Store.open(store_dir, migrations=_v2()) as s:
        t = s.table("prices")
        assert t[7] == {"amount": 7.0, "currency": "EUR"} and 0 not in t and len(t) == 49
        assert s.table("plain")["k"] == "no upcaster here"
    with Store.open(store_dir, migrations=_v3()) as s:
        assert s.table("prices")[7] == {"amount": 7.0, "currency": "EUR", "tax": 0.2}


def test_writes_are_stamped_with_the_current_version(store_dir):
    _v1_log(store_dir)
    with Store.open(store_dir, migrations=_v2()) as s:
        s.put("prices", 1000, {"amount": 5.0, "currency": "USD"})  # a v2 value
    with Store.open(store_dir, migrations=_v3()) as s:
        t = s.table("prices")
        assert t[1000] == {"amount": 5.0, "currency": "USD", "tax": 0.2}  # 2 -> 3 only
        assert t[3] == {"amount": 3.0, "currency": "EUR", "tax": 0.2}      # 1 -> 2 -> 3
        s.checkpoint()  # a v3 snapshot
    with Store.open(store_dir, migrations=_v3()) as s:
        assert s.table("prices")[1000]["tax"] == 0.2
    from rehydrate.migration_rollback import status  # the versions the log and snapshot hold

    info = status(store_dir)["tables"]["prices"]
    assert info["snapshot_version"] == 3 and info["log_versions"] == [1, 2]


def test_data_newer_than_the_code_is_refused(store_dir):
    _v1_log(store_dir)
    with Store.open(store_dir, migrations=_v3()) as s:
        s.put("prices", 1000, {"amount": 5.0, "currency": "USD", "tax": 0.1})
    with pytest.raises(ConfigError, match="version 3 data, newer than this code"):
        Store.open(store_dir, migrations=_v2())
    with pytest.raises(ConfigError, match="newer than this code"):
        Store.open(store_dir)


def test_a_gap_in_the_chain_is_refused_at_open(store_dir):
    _v1_log(store_dir)
    mig = Migrations()
    for v in (1, 3):
        mig.upcaster("prices", from_version=v)(lambda x: x)
    with pytest.raises(ConfigError, match="no upcaster from version 2 to 3") as e:
        Store.open(store_dir, migrations=mig)
    assert e.value.reason == "upcaster_gap"
    late = Migrations()
    late.upcaster("prices", from_version=2)(lambda x: x)  # no 1 -> 2 for v1 records
    with pytest.raises(ConfigError, match="no upcaster chain leads from 1 to 3"):
        Store.open(store_dir, migrations=late)


def _failing():
    mig = Migrations()

    @mig.upcaster("prices", from_version=1)
    def picky(v):
        if v["cents"] == 1700:
            raise ValueError("cannot convert 17")
        return v["cents"]

    return mig


def test_an_upcaster_that_raises_follows_the_recovery_mode(store_dir):
    _v1_log(store_dir)
    with pytest.raises(CorruptionError, match="picky|cannot convert 17") as e:
        Store.open(store_dir, migrations=_failing(), recovery="strict")
    assert e.value.lsn is not None
    with pytest.raises(CorruptionError):
        Store.open(store_dir, migrations=_failing())  # tolerate-tail: damage stops it
    with Store.open(store_dir, migrations=_failing(), recovery="skip-corrupted") as s:
        assert 17 not in s.table("prices") and s.table("prices")[18] == 1800
        (p,) = [p for p in s.recovery_report.problems if p.kind == "apply_error"]
        assert "cannot convert 17" in p.detail and p.lsn == 18


def test_an_upcaster_that_raises_on_a_snapshot_fails_the_open(store_dir):
    _v1_log(store_dir, checkpoint_at=49)
    with pytest.raises(rh.MigrationError, match="cannot convert 17") as e:
        Store.open(store_dir, migrations=_failing(), recovery="skip-corrupted")
    assert e.value.lsn is not None
    with Store.open(store_dir) as s:  # the snapshot was not called broken
        assert s.table("prices")[17] == {"cents": 1700}


@settings(max_examples=20, deadline=None)
@given(values=st.lists(st.integers(-10**6, 10**6), min_size=1, max_size=30),
       snap=st.booleans())
def test_upcast_state_equals_the_model(tmp_path_factory, values, snap):
    path = str(tmp_path_factory.mktemp("u") / "s")
    with Store.open(path) as s:
        for i, v in enumerate(values):
            s.put("prices", i % 7, {"cents": v})
        if snap:
            s.checkpoint()
    model = {}
    for i, v in enumerate(values):
        model[i % 7] = {"amount": v / 100, "currency": "EUR", "tax": 0.2}
    with Store.open(path, migrations=_v3()) as s:
        assert s.table("prices").to_dict() == model
