"""Aggregation over seeds, the Markdown tables and the plot file."""

import math

import pytest

from dreamteacher.benchmarking.report import aggregate, cost_table, plot, results_table


def _runs():
    rows = []
    for seed, (a, b) in enumerate([(30.0, 20.0), (34.0, 22.0), (32.0, 27.0)]):
        rows.append(
            {
                "method": "dreamteacher",
                "protocol": "finetune",
                "labels": 23,
                "seed": seed,
                "miou": a,
            }
        )
        rows.append(
            {"method": "scratch", "protocol": "finetune", "labels": 23, "seed": seed, "miou": b}
        )
    rows.append({"method": "scratch", "protocol": "frozen", "labels": 46, "seed": 0, "miou": 11.0})
    return rows


def test_mean_and_sample_std_over_seeds():
    agg = aggregate(_runs())
    dt = agg[("dreamteacher", "finetune", 23)]
    assert dt["n"] == 3 and dt["mean"] == pytest.approx(32.0)
    assert dt["std"] == pytest.approx(2.0)  # sqrt(((-2)^2 + 2^2 + 0^2) / 2)
    sc = agg[("scratch", "finetune", 23)]
    assert sc["mean"] == pytest.approx(23.0) and sc["std"] == pytest.approx(math.sqrt(13.0))
    assert agg[("scratch", "frozen", 46)] == {"mean": 11.0, "std": 0.0, "n": 1}


def test_markdown_table_per_protocol_with_best_in_bold():
    md = results_table(_runs(), ["scratch", "dreamteacher"])
    fin, frz = md.split("**frozen**")
    assert "| method | N = 23 |" in fin and "| method | N = 46 |" in frz
    assert "| dreamteacher | **32.0 ± 2.0** |" in fin
    assert "| scratch | 23.0 ± 3.6 |" in fin
    assert fin.index("| scratch") < fin.index("| dreamteacher")  # the order asked for
    assert "| dreamteacher | - |" in frz  # a missing cell is shown, not dropped
    assert "| scratch | **11.0** |" in frz


def test_cost_table_rows():
    t = cost_table([{"stage": "teacher", "wall_s": 12.4, "images_seen": 24000}])
    assert t.splitlines()[-1] == "| teacher | 12 | 24,000 |"


def test_plot_writes_a_png(tmp_path):
    p = plot(_runs(), tmp_path / "m.png")
    data = p.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_teacher_side_rows_appear_in_every_protocol_table():
    runs = _runs() + [
        {
            "method": "interpreter",
            "protocol": "teacher-side",
            "labels": 23,
            "seed": 0,
            "miou": 40.0,
        },
        {"method": "interpreter", "protocol": "teacher-side", "labels": 46, "seed": 0, "miou": 9.0},
    ]
    md = results_table(runs, ["scratch", "dreamteacher", "interpreter"])
    fin, frz = md.split("**frozen**")
    assert "| interpreter | **40.0** | **9.0** |" in fin  # alone at N = 46
    assert "| interpreter | **40.0** | 9.0 |" in frz
    assert "| scratch | - | **11.0** |" in frz
    assert "teacher-side" in md and "**teacher-side**" not in md  # no table of its own


def test_equal_compute_rows_make_tables_of_their_own():
    """`<method>@compute` rows: the equal-epochs tables keep the SSL rows at equal epochs, the
    equal-compute tables show the @compute rows instead, the other rows in both."""
    runs = _runs() + [
        {"method": "simclr", "protocol": "finetune", "labels": 23, "seed": 0, "miou": 25.0},
        {"method": "simclr@compute", "protocol": "finetune", "labels": 23, "seed": 0, "miou": 33.0},
    ]
    md = results_table(runs, ["scratch", "dreamteacher", "simclr"], split="val")
    epochs, compute = md.split("**finetune**, equal compute")
    assert "**finetune**, equal epochs (val mIoU %" in epochs
    assert "| simclr | 25.0 |" in epochs and "simclr@compute" not in epochs
    assert "| dreamteacher | **32.0 ± 2.0** |" in epochs
    assert "| simclr@compute | **33.0** |" in compute and "| simclr |" not in compute
    assert "| dreamteacher | 32.0 ± 2.0 |" in compute and "| scratch |" in compute
    assert compute.index("| dreamteacher") < compute.index("| simclr@compute")
    assert "equal" not in results_table(_runs())  # no @compute rows: one set of tables
