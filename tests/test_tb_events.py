"""tb_events: the TensorBoard event files we write are what TensorBoard's own reader reads."""

import pytest

from protosac_jax import tb_events


def test_crc32c_known_vector():
    assert tb_events.crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value


def test_tensorboard_reads_the_scalars_at_their_steps(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    writer = tb_events.EventsWriter(tmp_path)
    writer.add_scalars(5, {"eval/return_mean": -1.5, "losses/critic": 2.0})
    writer.add_scalars(2**40, {"eval/return_mean": 3.25e9})
    writer.close()
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert sorted(events.Tags()["scalars"]) == ["eval/return_mean", "losses/critic"]
    assert [(e.step, e.value) for e in events.Scalars("eval/return_mean")] == [
        (5, -1.5), (2**40, pytest.approx(3.25e9))]
    assert [(e.step, e.value) for e in events.Scalars("losses/critic")] == [(5, 2.0)]


def test_read_records_checks_the_crcs(tmp_path):
    writer = tb_events.EventsWriter(tmp_path)
    writer.add_scalars(1, {"a": 1.0})
    writer.close()
    assert len(tb_events.read_records(writer.path)) == 2  # file version + one event
    blob = bytearray(open(writer.path, "rb").read())
    blob[-6] ^= 0xFF  # a flipped byte inside the last event
    open(writer.path, "wb").write(bytes(blob))
    with pytest.raises(ValueError, match="bad data CRC"):
        tb_events.read_records(writer.path)
