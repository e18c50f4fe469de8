"""The suite's small Pendulum run: one set of shapes for every test where size is not the point.

XLA compiles one program per set of shapes and static settings, and the persistent compile
cache (trainer.enable_compilation_cache) shares it between processes by its HLO. A run's
length, seed, warm-up (`--learning-starts`), evaluation grid and checkpoint/log flags are not
in the program, so every run made from these flags, through train.py or
`protosac_jax.train(tiny_cfg(...))`, in any test process, is the same program: a cold suite
compiles it once instead of once per test (~10 s each on 2 cores). The buffer (600 rows) is
no longer than any of these runs, so its capacity is the same in all of them.
"""

import dataclasses

from protosac_jax import config as config_lib

# XLA's backend (LLVM) optimisation and its CPU fusion emitters off for the suite
# (tests/conftest.py puts these flags in the environment): the tests' programs are small and
# short-lived, so their compile time is most of the suite. The first two flags cut a cold
# suite's compile time by about a quarter; the fusion emitters (XLA's MLIR code generators for
# fused loops, on by default) off cut it by more than half again: the tiny Pendulum run's
# programs 7.7 -> 2.8 s, MJX inverted_pendulum's 20.9 -> 8.3 s (benchmarks/RESULTS.md, "Test
# suite"). The programs themselves (their HLO) are the ones users run; only the machine code
# is made differently.
BACKEND_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
SUITE_XLA_FLAGS = f"{BACKEND_FLAGS} --xla_cpu_use_fusion_emitters=false"


def xla_flags(devices: int | None = None, fusion_emitters: bool = False) -> str:
    """$XLA_FLAGS for a command a test runs with its own CPU device count: the suite's flags
    plus --xla_force_host_platform_device_count. `fusion_emitters`: keep XLA's default code
    generation for fused loops, for a test of bitwise sameness across device counts (without
    the emitters, Pendulum's sin/cos round differently at 2 and 4 envs per device)."""
    flags = BACKEND_FLAGS if fusion_emitters else SUITE_XLA_FLAGS
    if devices is None:
        return flags
    return f"{flags} --xla_force_host_platform_device_count={devices}"


BUFFER = 600  # rows: every tiny run is at least this long
# The preset's 2 updates per env step, local feedback, rollout-drawn prototype states and
# guarded re-selection are pinned off: the suite's many tiny runs keep one cheap program;
# tests of their own cover them.
# The networks' and prototypes' sizes alone, for tests of other envs where size is not the
# point (own envs, groups): small programs compile and run in a fraction of the time.
SHAPES = ("--hidden", "32,32", "--batch-size", "64", "--num-prototypes", "8", "--latent-dim", "8")
FLAGS = ("--env", "pendulum", *SHAPES, "--projection-every", "200", "--buffer-size", str(BUFFER),
         "--eval-episodes", "2", "--updates-per-step", "1", "--local-gain", "0",
         "--rollout-share", "0", "--guard-episodes", "0")


def tiny_cfg(**overrides) -> config_lib.TrainConfig:
    """`train.py *FLAGS --no-tensorboard` as a TrainConfig (test_cli's
    test_the_tiny_flags_are_tiny_cfg checks it), with top-level overrides (total_steps,
    learning_starts, eval_every, baseline, ...)."""
    cfg = config_lib.preset("pendulum")
    cfg = dataclasses.replace(
        cfg, buffer_size=BUFFER, eval_episodes=2, log_tensorboard=False, updates_per_step=1.0,
        sac=dataclasses.replace(cfg.sac, hidden_sizes=(32, 32), batch_size=64),
        proto=dataclasses.replace(cfg.proto, num_prototypes=8, latent_dim=8,
                                  projection_every=200, local_gain=0.0, rollout_share=0.0,
                                  guard_episodes=0, selection_proposals=1))
    return dataclasses.replace(cfg, **overrides)
