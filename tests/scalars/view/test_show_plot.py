"""`scalars show` tables and `scalars plot` PNGs on stores with planted values: rows, panels, pixels."""

from __future__ import annotations

import matplotlib.image
import numpy as np
import pytest
from typer.testing import CliRunner

from cli.app import app
from store import VariableSpec, ensure_variables, write_cells, write_run_json

runner = CliRunner()
STEPS = [0, 10, 20, 50, 100, 200, 500, 1000]  # log-spaced-ish, as schedules often are


def _run(tmp_path, name, layers=2, heads=4, seed=0):
    """A store whose induction_score grows at head (layers-1, 2); loss falls; logit_lens_loss per layer."""
    run = str(tmp_path / name)
    write_run_json(run, {"config": {"seeds": {"init_seed": seed}, "model": {"n_layers": layers}}})
    lh = {"layer": np.arange(layers), "head": np.arange(heads)}
    ensure_variables(run, [
        VariableSpec("induction_score", ("layer", "head"), lh, {"probe_hash": "x", "units": "attention probability"}),
        VariableSpec("loss", (), {}, {"probe_hash": "x", "units": "nats"}),
        VariableSpec("logit_lens_loss", ("layer",), {"layer": lh["layer"]}, {"probe_hash": "x", "units": "nats"}),
    ], STEPS)
    t = np.log1p(np.array(STEPS, float))[:, None, None]
    score = 0.02 + 0.01 * np.arange(layers * heads).reshape(1, layers, heads) / (layers * heads) + 0 * t
    score[:, layers - 1, 2] += 0.9 / (1 + np.exp(-(t[:, 0, 0] - 4 - seed)))  # the induction head forms
    write_cells(run, "induction_score", STEPS, score.astype(np.float32))
    write_cells(run, "loss", STEPS[:-1], (4 - t[:-1, 0, 0] / 3).astype(np.float32))  # last step not computed
    write_cells(run, "logit_lens_loss", STEPS, (4 - t[:, 0] / (3 + np.arange(layers))).astype(np.float32))
    return run


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # rich reads it when printing: table cells stay on one line


def _grid(panels) -> tuple[int, int]:
    """(rows, columns) of the panels, from their positions in the figure."""
    boxes = [a.get_position() for a in panels]
    return len({round(b.y0, 3) for b in boxes}), len({round(b.x0, 3) for b in boxes})


def _image(path) -> np.ndarray:
    img = matplotlib.image.imread(path)
    assert img[..., :3].var() > 1e-3, "the PNG is blank"
    return img


def test_plot_layer_head_type_one_run(tmp_path, figures):
    run = _run(tmp_path, "r")
    out = tmp_path / "ind.png"
    r = runner.invoke(app, ["plot", run, "--type", "induction_score", "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert "3 panels" in r.output
    _image(out)
    (panels, fig), = figures
    assert _grid(panels) == (1, 3)  # one row of 2 heatmaps + 1 line panel
    assert [a.get_title() for a in panels] == ["layer 0", "layer 1", "top 4 heads"]
    assert all(a.get_xscale() == "linear" for a in panels)
    clims = {a.collections[0].get_clim() for a in panels[:2]}  # one colour scale: layers can be compared
    assert len(clims) == 1 and clims.pop() == pytest.approx((0.02, 0.02 + 0.0075 + 0.9 / (1 + np.exp(-(np.log1p(1000) - 4)))))
    labels = [line.get_label() for line in panels[-1].get_lines()]
    assert labels[0] == "L1H2" and len(labels) == 4  # the planted head is the top head
    np.testing.assert_allclose(panels[-1].get_lines()[0].get_ydata()[-1], 0.02 + 0.01 * 6 / 8 + 0.9 /
                               (1 + np.exp(-(np.log1p(1000) - 4))), rtol=1e-6)


def test_plot_several_runs_faceted_with_log_step(tmp_path, figures):
    runs = [_run(tmp_path, "a", layers=2, seed=0), _run(tmp_path, "b", layers=3, seed=1)]
    out = tmp_path / "both.png"
    r = runner.invoke(app, ["plot", *runs, "--type", "induction_score", "-o", str(out), "--log-step"])
    assert r.exit_code == 0, r.output
    (panels, fig), = figures
    assert len(panels) == 2 * (3 + 1) and "8 panels" in r.output  # a row per run; layers padded to 3
    _image(out)
    assert _grid(panels) == (2, 4)
    assert [a.get_title() for a in panels[:4]] == ["a layer 0", "a layer 1", "a layer 2", "top 4 heads"]
    assert all(a.get_xscale() == "symlog" for a in panels)
    assert panels[3].get_lines()[0].get_label() == "L1H2" and panels[7].get_lines()[0].get_label() == "L2H2"


def test_plot_per_step_type_overlays_runs(tmp_path, figures):
    runs = [_run(tmp_path, "a", seed=0), _run(tmp_path, "b", seed=1), _run(tmp_path, "c", seed=2)]
    out = tmp_path / "loss.png"
    r = runner.invoke(app, ["plot", *runs, "--type", "loss", "-o", str(out), "--log-step"])
    assert r.exit_code == 0, r.output
    _image(out)
    (panels, fig), = figures
    assert len(panels) == 1 and panels[0].get_xscale() == "symlog"
    lines = panels[0].get_lines()
    assert [line.get_label() for line in lines] == ["a", "b", "c"]
    assert np.isnan(lines[0].get_ydata()[-1]) and len(lines[0].get_xdata()) == len(STEPS)  # uncomputed: a gap


def test_plot_per_layer_type_draws_a_line_per_layer(tmp_path, figures):
    out = tmp_path / "ll.png"
    r = runner.invoke(app, ["plot", _run(tmp_path, "r"), "--type", "logit_lens_loss", "-o", str(out)])
    assert r.exit_code == 0, r.output
    _image(out)
    (panels, fig), = figures
    assert [line.get_label() for line in panels[0].get_lines()] == ["layer=0", "layer=1"]


def test_plot_overlay_draws_one_line_per_run_for_its_best_or_a_chosen_head(tmp_path, figures):
    runs = [_run(tmp_path, n, seed=s) for n, s in (("a", 0), ("b", 1), ("c", 2))]
    r = runner.invoke(app, ["plot", *runs, "--type", "induction_score", "--overlay", "-o", str(tmp_path / "o.png")])
    assert r.exit_code == 0, r.output
    (panels, _), = figures
    assert len(panels) == 1
    assert [line.get_label() for line in panels[0].get_lines()] == ["a L1H2", "b L1H2", "c L1H2"]
    r = runner.invoke(app, ["plot", *runs, "--type", "induction_score", "--head", "0.1", "-o", str(tmp_path / "h.png")])
    assert r.exit_code == 0, r.output
    lines = figures[-1][0][0].get_lines()
    assert [line.get_label() for line in lines] == ["a L0H1", "b L0H1", "c L0H1"]
    np.testing.assert_allclose(lines[0].get_ydata(), 0.02 + 0.01 / 8, rtol=1e-6)
    r = runner.invoke(app, ["plot", *runs, "--type", "induction_score", "--head", "5.0", "-o", str(tmp_path / "x.png")])
    assert r.exit_code == 2 and "--head 5.0 is not a head of 'induction_score'" in r.output


def test_plot_align_at_shifts_each_run_to_its_own_crossing(tmp_path, figures):
    from scalars.view.plotting import crossing

    runs = [_run(tmp_path, n, seed=s) for n, s in (("a", 0), ("b", 1), ("c", 2))]
    r = runner.invoke(app, ["plot", *runs, "--type", "induction_score", "--overlay", "--align-at", "0.5",
                            "-o", str(tmp_path / "al.png")])
    assert r.exit_code == 0, r.output
    _image(tmp_path / "al.png")
    (panels, _), = figures
    curves = [ln for ln in panels[0].get_lines() if len(ln.get_xdata()) == len(STEPS)]
    marks = [ln for ln in panels[0].get_lines() if len(ln.get_xdata()) == 1]
    assert len(curves) == 3 and len(marks) == 3  # every run crosses, each crossing marked at (0, 0.5)
    for line, seed in zip(curves, (0, 1, 2)):
        t = np.log1p(np.array(STEPS, float))
        values = 0.02 + 0.01 * 6 / 8 + 0.9 / (1 + np.exp(-(t - 4 - seed)))
        at = crossing(np.array(STEPS), values, 0.5)
        np.testing.assert_allclose(line.get_xdata(), np.array(STEPS) - at, atol=1e-3)  # float32 store
        assert f"crosses at {at:.0f}" in line.get_label()
    assert all(m.get_xdata()[0] == 0 and m.get_ydata()[0] == 0.5 for m in marks)
    assert crossing(np.array([0, 10]), np.array([0.0, 1.0]), 0.25) == 2.5
    assert crossing(np.array([0, 10]), np.array([0.0, 0.1]), 0.5) is None


def test_plot_several_types_on_one_axis(tmp_path, figures):
    run = _run(tmp_path, "r")
    r = runner.invoke(app, ["plot", run, "--type", "loss", "--type", "induction_score", "-o", str(tmp_path / "t.png")])
    assert r.exit_code == 0, r.output
    (panels, _), = figures
    assert [line.get_label() for line in panels[0].get_lines()] == ["loss", "induction_score L1H2"]


def test_plot_a_many_dim_type_draws_its_top_cells_not_a_line_per_cell(tmp_path, figures):
    run = str(tmp_path / "paths")
    write_run_json(run, {"config": {"seeds": {"init_seed": 0}}})
    coords = {"layer": np.arange(2), "head": np.arange(4), "src_layer": np.arange(2), "src_head": np.arange(4)}
    ensure_variables(run, [VariableSpec("composition_k", tuple(coords), coords, {"probe_hash": "x"})], STEPS)
    values = np.random.default_rng(0).uniform(0, 0.1, (len(STEPS), 2, 4, 2, 4)).astype(np.float32)
    values[:, 1, 2, 0, 3] = np.linspace(0.2, 0.9, len(STEPS))  # the one that grows
    write_cells(run, "composition_k", STEPS, values)
    r = runner.invoke(app, ["plot", run, "--type", "composition_k", "-o", str(tmp_path / "c.png")])
    assert r.exit_code == 0, r.output
    _image(tmp_path / "c.png")
    (panels, _), = figures
    lines = panels[0].get_lines()
    assert len(lines) == 8 and lines[0].get_label() == "L0H3→L1H2"
    assert panels[0].get_title() == "top 8 of 64 cells by final value"
    assert len(panels[0].get_legend().get_texts()) == 8


def test_plot_unknown_type_is_a_clean_error(tmp_path):
    r = runner.invoke(app, ["plot", _run(tmp_path, "r"), "--type", "nope", "-o", str(tmp_path / "x.png")])
    assert r.exit_code == 2 and "scalar 'nope' is not stored here" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "x.png").exists()


def test_show_lists_stored_types(tmp_path):
    r = runner.invoke(app, ["show", _run(tmp_path, "r")])
    assert r.exit_code == 0, r.output
    lines = {line.split("│")[1].strip(): line for line in r.output.splitlines() if line.count("│") > 3}
    assert set(lines) >= {"induction_score", "loss", "logit_lens_loss"}
    assert "7/8" in lines["loss"] and "8/8" in lines["induction_score"] and "layer, head" in lines["induction_score"]


def _rows(output: str, title: str) -> list[list[str]]:
    block = output.split(title, 1)[1]
    rows = []
    for line in block.splitlines()[1:]:
        if line.startswith("└"):
            break
        cells = [c.strip() for c in line.strip("│ ").split("│")]
        if cells and cells[0].lstrip("-").isdigit():
            rows.append(cells)
    return rows


def test_show_top_heads_at_a_step_and_values_over_steps(tmp_path):
    run = _run(tmp_path, "r")
    r = runner.invoke(app, ["show", run, "--type", "induction_score", "--step", "1000", "--top", "3"])
    assert r.exit_code == 0, r.output
    top = _rows(r.output, "induction_score at step 1000: top")  # rich wraps a long title
    assert [row[:2] for row in top] == [["1", "2"], ["1", "3"], ["1", "1"]]
    assert float(top[0][2]) == pytest.approx(0.02 + 0.0075 + 0.9 / (1 + np.exp(-(np.log1p(1000) - 4))), abs=1e-4)
    over = _rows(r.output, "induction_score over steps")
    assert [row[0] for row in over] == [str(s) for s in STEPS]
    r = runner.invoke(app, ["show", run, "--type", "loss"])
    assert r.exit_code == 0, r.output
    over = _rows(r.output, "loss over steps")
    assert over[0] == ["0", "4.0000"] and over[-1] == ["1000", "nan"]


def test_show_every_step_the_argmax_head_and_several_runs(tmp_path):
    many = [0, *range(5, 205, 5)]  # 41 steps: every one is shown, none silently dropped
    run = str(tmp_path / "many")
    write_run_json(run, {"config": {"seeds": {"init_seed": 0}}})
    lh = {"layer": np.arange(2), "head": np.arange(4)}
    ensure_variables(run, [VariableSpec("induction_score", ("layer", "head"), lh, {"probe_hash": "x"})], many)
    values = np.zeros((len(many), 2, 4), np.float32)
    values[:, 1, 3] = np.linspace(0, 1, len(many))
    write_cells(run, "induction_score", many, values)
    r = runner.invoke(app, ["show", run, "--type", "induction_score"])
    assert r.exit_code == 0, r.output
    over = _rows(r.output, "induction_score over steps")
    assert [int(row[0]) for row in over] == many
    assert over[-1][2] == "1.0000 H3"  # the arg-max head of layer 1
    r = runner.invoke(app, ["show", run, "--type", "induction_score", "--steps", "100-120"])
    assert [row[0] for row in _rows(r.output, "induction_score over steps")] == ["100", "105", "110", "115", "120"]
    runs = [_run(tmp_path, "a", seed=0), _run(tmp_path, "b", seed=1)]
    r = runner.invoke(app, ["show", *runs, "--type", "induction_score", "--step", "1000", "--top", "2"])
    assert r.exit_code == 0, r.output
    assert "a: induction_score at step 1000" in r.output and "b: induction_score at step 1000" in r.output
    over = _rows(r.output, "induction_score over steps")
    assert len(over) == len(STEPS) and len(over[0]) == 3  # a column per run
    assert over[-1][1].endswith("L1H2") and over[-1][2].endswith("L1H2")
    r = runner.invoke(app, ["show", *runs, "--type", "induction_scor"])
    assert r.exit_code == 2 and "did you mean 'induction_score'" in r.output
    r = runner.invoke(app, ["show", *runs])
    assert r.exit_code == 0 and "2 runs: stored scalars" in r.output.replace("\n", " ")


def test_show_errors(tmp_path):
    run = _run(tmp_path, "r")
    r = runner.invoke(app, ["show", run, "--type", "induction_score", "--step", "15"])
    assert r.exit_code == 2 and "step 15 is not stored; nearest stored steps: 10, 20" in r.output
    r = runner.invoke(app, ["show", run, "--type", "nope"])
    assert r.exit_code == 2 and "scalar 'nope' is not stored in" in r.output
    r = runner.invoke(app, ["show", str(tmp_path / "missing")])
    assert r.exit_code == 2 and "has no scalars.zarr" in r.output


def test_show_a_many_dim_type_as_top_cells_and_its_max_over_steps(tmp_path):
    """A (layer, head, dst_layer, dst_head, side) type: 2*4*2*4*3 = 192 cells would be a 192-column
    table; `show` lists the top cells at the step and, over steps, the max cell and where it is."""
    run = str(tmp_path / "paths")
    write_run_json(run, {"config": {"seeds": {"init_seed": 0}}})
    coords = {"layer": np.arange(2), "head": np.arange(4), "dst_layer": np.arange(2), "dst_head": np.arange(4),
              "side": np.array(["q", "k", "v"])}
    dims = tuple(coords)
    ensure_variables(run, [VariableSpec("path_patch", dims, coords, {"probe_hash": "x"})], STEPS)
    values = np.full((len(STEPS), 2, 4, 2, 4, 3), np.nan, np.float32)
    values[:, 0, :, 1, :, :] = 0.01  # only layer 0 -> layer 1 paths exist
    values[:, 0, 1, 1, 2, 1] = np.linspace(0.1, 0.8, len(STEPS))  # the K-composition path grows
    values[:, 0, 3, 1, 0, 2] = 0.5  # a constant V path
    write_cells(run, "path_patch", STEPS, values)
    r = runner.invoke(app, ["show", run, "--type", "path_patch", "--step", "1000", "--top", "2"])
    assert r.exit_code == 0, r.output
    top = _rows(r.output, "path_patch at step 1000: top 2 cells")
    assert [row[:5] for row in top] == [["0", "1", "1", "2", "k"], ["0", "3", "1", "0", "v"]]
    assert float(top[0][5]) == pytest.approx(0.8)
    over = _rows(r.output, "path_patch over steps")
    assert over[0][1:] == ["0.5000", "0,3,1,0,v"]  # at step 0 the V path leads
    assert over[-1][1:] == ["0.8000", "0,1,1,2,k"]
    assert len(over[0]) == 3, "one max column, not 192"


def test_plot_of_a_type_with_a_string_dim_names_each_line_by_its_coordinate(tmp_path, figures):
    """A dim with string coordinates (as `sgld_diagnostics`'s `stat`) plots a line per name."""
    run = str(tmp_path / "s")
    write_run_json(run, {"config": {"seeds": {"init_seed": 0}}})
    stats = np.array(["mean_loss", "r_hat"], dtype=object)
    ensure_variables(run, [VariableSpec("sgld_summary", ("stat",), {"stat": stats}, {"probe_hash": "x"})], STEPS)
    write_cells(run, "sgld_summary", STEPS, np.stack([np.linspace(1, 2, len(STEPS)), np.ones(len(STEPS))], 1)
                .astype(np.float32))
    r = runner.invoke(app, ["plot", run, "--type", "sgld_summary", "-o", str(tmp_path / "s.png")])
    assert r.exit_code == 0, r.output
    (panels, _), = figures
    assert sorted(line.get_label() for line in panels[0].get_lines()) == ["stat=mean_loss", "stat=r_hat"]
