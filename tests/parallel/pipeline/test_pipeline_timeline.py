import pytest

from weft.parallel.pipeline.schedule import build_schedule, simulate_pipeline
from weft.parallel.pipeline.timeline import bubble_fraction, draw, figure


def simulated_events(kind, S, M):
    sched = build_schedule(kind, [[s] for s in range(S)], M)
    res = simulate_pipeline(sched)
    return [(r, a.kind, a.mb, a.chunk, s, e)
            for r, acts in sched.items() for a, (s, e) in zip(acts, res["times"][r])
            if a.kind in ("F", "B")], res


@pytest.mark.parametrize("kind", ["gpipe", "1f1b"])
def test_bubble_of_recorded_events_matches_schedule(kind):
    events, res = simulated_events(kind, 3, 6)
    assert bubble_fraction(events) == pytest.approx(res["bubble"])
    assert bubble_fraction(events) == pytest.approx(2 / 8)  # (S-1)/(M+S-1) with unit ops


def test_no_bubble_when_always_busy():
    events = [(0, "F", 0, 0, 0.0, 1.0), (0, "B", 0, 0, 1.0, 2.0),
              (1, "F", 1, 0, 0.0, 1.5), (1, "wait", 1, 0, 1.5, 1.6), (1, "B", 1, 0, 1.6, 2.0)]
    assert bubble_fraction(events) == pytest.approx(0.1 / 4)


def test_draw_writes_png(tmp_path):
    events, _ = simulated_events("1f1b", 2, 4)
    out = draw(events, tmp_path / "t" / "timeline.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.parent.glob(".*"))  # no temp file left behind


@pytest.mark.parametrize("ranks", [1, 2, 4])
def test_legend_covers_no_rank_row(ranks):
    # issue 14: the legend sat on rank 0's bars (upper right inside the axes)
    events, _ = simulated_events("1f1b", ranks, 4)
    fig = figure(events)
    fig.canvas.draw()
    ax = fig.axes[0]
    legend, bars = ax.get_legend().get_window_extent(), ax.get_window_extent()
    title = ax.title.get_window_extent()
    assert legend.y0 >= bars.y1 - 1e-6           # above the plotting area: no row under it
    assert legend.y1 <= title.y0 + 1e-6          # and below the title
    assert 0 <= legend.x0 and legend.x1 <= fig.bbox.x1
