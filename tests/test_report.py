"""Report cells and plots: several seeds as mean ± std, axes that fit the data."""

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402

from cure_jax import report  # noqa: E402
from cure_jax.seeds import Spread  # noqa: E402


def test_cells_show_a_spread_as_mean_plus_minus_std():
    assert report.pct_cell(0.1234) == "12.34"
    assert report.pct_cell(Spread(0.1234, 0.01, (0.1134, 0.1334))) == "12.34 ± 1.00"
    assert report.num_cell(Spread(0.3006, 0.0201, ())) == "0.3006 ± 0.0201"
    assert report.pct_cell(None) == "-" and report.num_cell(float("nan")) == "-"
    assert report.pct_cell(Spread(float("nan"), float("nan"), ())) == "-"
    # One seed has no spread: its value alone, not "± 0.00".
    assert report.pct_cell(Spread(0.1234, 0.0, (0.1234,))) == "12.34"
    assert report.num_cell(Spread(1212.0, 0.0, (1212.0,)), 0) == "1212"


def test_axis_limits_fit_the_data_not_the_whole_range():
    lo, hi = report.axis_limits([5.0, 8.0, 12.0])
    assert 4.0 < lo < 5.0 and 12.0 < hi < 13.0
    # Error bars are inside the limits.
    lo, hi = report.axis_limits([5.0, 12.0], [1.0, 2.0])
    assert lo < 4.0 and hi > 14.0
    # Never far outside the quantity's range, and a single point still gets a span.
    lo, hi = report.axis_limits([0.0, 100.0])
    assert -5.0 < lo < 0.0 and 100.0 < hi < 105.0
    lo, hi = report.axis_limits([50.0], min_span=4.0)
    assert hi - lo == pytest.approx(4.0 * 1.16)


def _metrics(forget_map, retain_map, spread=0.0):
    def value(x):
        return Spread(x, spread, (x - spread, x + spread)) if spread else x

    return {"forget_acc_before": value(0.98), "retain_acc_before": value(0.95),
            "forget_map_before": value(0.12), "retain_map_before": value(0.11),
            "forget_acc_after": value(0.2), "retain_acc_after": value(0.7),
            "forget_map_after": value(forget_map), "retain_map_after": value(retain_map),
            "ues": value(0.28), "head_scored": 1.0}


@pytest.mark.parametrize("spread", [0.0, 0.01])
def test_plot_comparison_fits_small_map_values(tmp_path, monkeypatch, spread):
    import matplotlib.figure

    saved = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig",
                        lambda fig, path, **kw: saved.append(fig))
    results = {"cure": _metrics(0.05, 0.10, spread), "dispersion": _metrics(0.06, 0.11, spread)}
    report.plot_comparison(results, tmp_path / "c.png", title="t")
    ax_acc, ax_map = saved[0].axes[:2]
    # mAP between 5% and 12%: the retrieval panel's axes stay near that range.
    assert ax_map.get_xlim()[0] > 3.0 and ax_map.get_xlim()[1] < 15.0
    assert ax_map.get_ylim()[0] > 8.0 and ax_map.get_ylim()[1] < 14.0
    assert ax_acc.get_xlim()[0] > 10.0  # forget accuracy 20-98%: no empty 0-10 band
    if spread:  # error bars drawn: one set of caps per point
        assert any(len(line.get_xdata()) == 1 for line in ax_map.lines)
