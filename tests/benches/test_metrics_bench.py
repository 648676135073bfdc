"""benches/metrics.py's `--scrape-every` (issue 19): how often the other
process scrapes while metrics are on; a
scrape interval that is not a positive number is a usage error."""

from __future__ import annotations

import pytest

from benches import metrics


def test_the_scrape_interval_reaches_the_scraper(monkeypatch):
    seen = []

    class Recorded(metrics.Scraper):
        def __init__(self, every=metrics.SCRAPE_EVERY):
            seen.append(every)
            super().__init__(every)

    monkeypatch.setattr(metrics, "Scraper", Recorded)
    rows = metrics.overhead_rows(1, 200, 20, 200, [1], scrape_every=15.0)
    assert seen == [15.0]
    assert [row[:2] for row in rows] == [["word count", 1], ["CPU-heavy map", 1], ["windowed sum", 1]]
    # one pair of runs proves nothing either way: no interval, no verdict
    assert [row[-2:] for row in rows] == [["too few reps", "not shown"]] * 3


@pytest.mark.parametrize("value", ["0", "-1", "nan"])
def test_a_scrape_interval_that_is_not_positive_is_a_usage_error(usage_error, value):
    said = usage_error(metrics.main, ["--scrape-every", value])
    assert "--scrape-every must be a positive number of seconds" in said


class _NoScraper:
    port = 0  # the runs with metrics listen on a free port each, scraped by nobody

    def __init__(self, every) -> None:
        pass

    def close(self) -> None:
        pass


def test_only_runs_the_pipelines_it_names(monkeypatch):
    monkeypatch.setattr(metrics, "Scraper", _NoScraper)
    rows = metrics.overhead_rows(1, 200, 20, 200, [1], scrape_every=15.0, only=("windows", "heavy"))
    assert [row[:2] for row in rows] == [["CPU-heavy map", 1], ["windowed sum", 1]]


@pytest.mark.parametrize("value", ["", "windows,nonsense", "q5"])
def test_only_refuses_what_is_not_a_pipeline(usage_error, value):
    said = usage_error(metrics.main, ["--only", value])
    assert "--only takes some of wordcount, heavy, windows" in said
