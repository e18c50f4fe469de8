"""notebooks/colab.ipynb runs end to end on a tiny checkpoint (so it never rots)."""

from pathlib import Path

import nbformat
from nbclient import NotebookClient

import protosac_jax
from tiny import tiny_cfg

ROOT = Path(__file__).resolve().parents[1]


def test_colab_notebook_executes(tmp_path, monkeypatch):
    cfg = tiny_cfg(total_steps=1500, learning_starts=500, eval_every=500)  # small shapes
    run = protosac_jax.train(cfg, out=tmp_path / "run", progress=False, quiet=True).run_dir
    monkeypatch.setenv("PROTOSAC_CKPT", str(run))
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    nb = nbformat.read(ROOT / "notebooks" / "colab.ipynb", as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs)
    assert "pendulum protosac trained for 1500 env steps" in text
    assert "return" in text and "prototype" in text
    assert any("image/png" in o.get("data", {}) for o in outputs)  # the grid, inline
    assert (run / "episode.mp4").stat().st_size > 1000
