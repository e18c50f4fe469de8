"""train.py --wandb: Weights & Biases logging, offline (no network), read back from the run's
own .wandb file: the same `group/name` keys and values as metrics.jsonl, the config logged,
a resumed run continuing the same W&B run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("wandb")

from tiny import FLAGS as TINY  # noqa: E402


def read_wandb(path: Path) -> tuple[list[dict], dict]:
    """(history rows, config) of a .wandb file: W&B's LevelDB-style log (a 7-byte header,
    32 KiB blocks of records with a 7-byte header: crc32, length, type 1 full / 2 first /
    3 middle / 4 last) of `Record` protobufs."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, pending, records = 7, 32768, b"", []
    while pos + 7 <= len(data):
        room = block - pos % block
        if room < 7:  # block trailer: skip to the next block
            pos += room
            continue
        length = int.from_bytes(data[pos + 4:pos + 6], "little")
        kind = data[pos + 6]
        if kind == 0 and length == 0:
            break
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        pending += chunk
        if kind in (1, 4):
            records.append(pending)
            pending = b""
    history, config = [], {}
    for raw in records:
        record = pb.Record()
        record.ParseFromString(raw)
        which = record.WhichOneof("record_type")
        if which == "history":
            history.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                            for item in record.history.item})
        elif which in ("config", "run"):  # the config comes with the run record
            updates = record.config.update if which == "config" else record.run.config.update
            for item in updates:
                config[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return history, config


def _train(*args, tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "WANDB_MODE": "offline",
           "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true"}
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=600)


def test_wandb_offline_logs_what_metrics_jsonl_logs(tmp_path):
    run = tmp_path / "run"
    proc = _train(*TINY, "--total-steps", "1000", "--learning-starts", "400",
                  "--eval-every", "500", "--out", str(run), "--wandb",
                  "--no-progress", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    proc = _train("--resume", str(run), "--total-steps", "1500", "--wandb", "--no-progress",
                  tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    files = sorted(run.glob("wandb/offline-run-*/run-*.wandb"))
    run_id = (run / "wandb_id").read_text().strip()
    assert len(files) == 2 and all(f.name == f"run-{run_id}.wandb" for f in files)
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    logged = []
    for f in files:
        history, config = read_wandb(f)
        assert config["seed"] == 0 and config["sac"]["gamma"] == 0.99
        logged += history
    assert [row["_step"] for row in logged] == [line["env_steps"] for line in lines]
    for row, line in zip(logged, lines):
        expected = {k: v for k, v in line.items() if k != "env_steps" and v is not None}
        assert {k: row[k] for k in expected} == pytest.approx(expected)
        assert "eval/return_mean" in row and not any(k.startswith("_") and k not in (
            "_step", "_runtime", "_timestamp") for k in row)
