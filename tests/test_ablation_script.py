"""benchmarks/ablation.py: its variants are valid flags, and its table says what the rows say."""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import ablation  # noqa: E402
from protosac_jax import cli  # noqa: E402


@pytest.mark.parametrize("env", sorted(ablation.VARIANTS))
def test_every_variant_is_a_config_train_py_accepts(env):
    for name, flags in ablation.VARIANTS[env]:
        cfg = cli.config_from_args(cli.build_parser().parse_args(["--env", env, *flags]))
        assert cfg.env == env, name
    # each variant changes the preset in the field its name says
    by_name = {name: cli.config_from_args(cli.build_parser().parse_args(["--env", env, *f]))
               for name, f in ablation.VARIANTS[env]}
    assert by_name["n-step 3"].sac.n_step == 3 and by_name["preset"].sac.n_step == 1
    assert by_name["C51 (101 atoms)"].sac.num_atoms == 101
    assert by_name["CrossQ critics"].sac.crossq and not by_name["preset"].sac.crossq


def _row(variant, algo, finals, effective=(), wall=10.0):
    return {"variant": variant, "algo": algo, "final_eval": list(finals),
            "effective": list(effective), "group_wall_s": wall}


def test_table_on_hand_made_rows():
    rows = [_row("preset", "protosac", [-100, -200], [1.1, 1.3]),
            _row("preset", "sac", [-150, -150]),
            _row("n-step 3", "protosac", [-110, -130], [1.0, 2.0], 20.0),
            _row("n-step 3", "sac", [-100, -100])]
    lines = ablation.table(rows).splitlines()
    assert len(lines) == 4
    preset, nstep = lines[2].split("|"), lines[3].split("|")
    assert preset[2].strip() == "-150.0 (-200.0)" and preset[3].strip() == ""
    assert preset[6].strip() == "+0.0 %" and preset[7].strip() == "1.10-1.30"
    # n-step: ProtoSAC -120 (+30 vs preset), SAC -100 (+50), ProtoSAC 20 % below SAC
    assert nstep[3].strip() == "+30.0" and nstep[5].strip() == "+50.0"
    assert nstep[6].strip() == "-20.0 %" and nstep[8].strip() == "20 / 10"
