"""``deploy/grafana/imagine.json``: every query names a series that a real ``GET /metrics`` exports.

A renamed counter would otherwise leave a panel quietly empty. The exported names come from scraping
a real web front (real SQLite file, fake backend) on loopback, so the hand-written web gauges count too.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway import ImagineService, Settings
from gateway.fake_backend import FakeBackend
from gateway.web.app import WebFront, WebOptions
from storage import Database

DASHBOARD = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "imagine.json"

# The sample names Prometheus stores for each family type, as prometheus_client writes them
# (``_created`` comes from the scraped samples themselves).
SAMPLE_SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum"),
    "summary": ("", "_count", "_sum"),
    "unknown": ("",),
}

# Words of PromQL that stand where a metric name could, not followed by "(".
PROMQL_WORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left", "group_right"}
    | {"inf", "nan"}
)
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_VARIABLES = re.compile(r"\$\{[^}]*\}|\$\w+")
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_LABEL_LISTS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"(?<![\w.:])[A-Za-z_:][\w:]*")
_LABEL_VALUES = re.compile(r"^\s*label_values\((?P<series>.*),\s*\w+\s*\)\s*$", re.DOTALL)
_QUERY_RESULT = re.compile(r"^\s*query_result\((?P<expr>.*)\)\s*$", re.DOTALL)


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers that are not functions, keywords,
    label names (inside ``{}`` or ``by (...)``), durations or Grafana variables."""
    text = _STRINGS.sub('""', expr)
    text = _VARIABLES.sub(" ", text)
    text = _MATCHERS.sub(" ", text)
    text = _RANGES.sub(" ", text)
    text = _LABEL_LISTS.sub(" ", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        if text[match.end() :].lstrip().startswith("("):
            continue  # a function or an aggregation
        if match.group() not in PROMQL_WORDS:
            names.add(match.group())
    return names


def variable_metric_names(query: str) -> set[str]:
    """The metric names in a Grafana templating query (``label_values``, ``query_result`` or PromQL)."""
    if found := _LABEL_VALUES.match(query):
        return metric_names(found["series"])
    if query.lstrip().startswith("label_values("):
        return set()  # label_values(label): every series
    if found := _QUERY_RESULT.match(query):
        return metric_names(found["expr"])
    return metric_names(query)


def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside collapsed rows included."""
    for panel in items:
        yield panel
        yield from panels(panel.get("panels", []))


def queries(dashboard: dict[str, Any]) -> dict[str, set[str]]:
    """Each query of the dashboard (panel targets and templating variables) with its metric names."""
    found = {}
    for panel in panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            found[f"{panel['title']!r} {target['refId']}: {target['expr']}"] = metric_names(target["expr"])
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable["type"] == "query":
            query = variable["query"]
            text = query["query"] if isinstance(query, dict) else query
            found[f"${variable['name']}: {text}"] = variable_metric_names(text)
    return found


def unexported(dashboard: dict[str, Any], exported: set[str]) -> dict[str, list[str]]:
    """The queries that name a series ``/metrics`` does not export, with those names."""
    return {
        query: sorted(names - exported) for query, names in queries(dashboard).items() if names - exported
    }


def exported_series(text: str) -> set[str]:
    """The sample names a Prometheus scrape of this text stores, families with no samples yet included."""
    names = set()
    for family in text_string_to_metric_families(text):
        names |= {family.name + suffix for suffix in SAMPLE_SUFFIXES[family.type]}
        names |= {sample.name for sample in family.samples}
    return names


@pytest.fixture
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return loaded


@pytest.fixture
async def exported(data_dir: Path) -> AsyncIterator[set[str]]:
    """The series a real web front's ``GET /metrics`` exports."""
    settings = Settings.from_env(
        {
            "IMAGINE_DB": str(data_dir / "imagine.sqlite3"),
            "IMAGINE_BACKEND": "fake",
            "IMAGINE_MODEL": "tiny",
            "IMAGINE_WEB_PORT": "0",
        },
        env_file=None,
    )
    db = await Database.open(settings.store)
    service = ImagineService(settings, db, FakeBackend(settings))
    await service.start()
    front = WebFront(settings, service, WebOptions(post_rate=None))
    try:
        url = await front.start()
        async with httpx.AsyncClient(base_url=url) as http:
            response = await http.get("/metrics")
    finally:
        await front.stop()
        await service.close(drain_timeout=5)
        await db.close()
    assert response.status_code == 200
    yield exported_series(response.text)


def test_every_query_names_a_series_the_service_exports(
    dashboard: dict[str, Any], exported: set[str]
) -> None:
    assert unexported(dashboard, exported) == {}


def test_every_query_names_at_least_one_metric(dashboard: dict[str, Any]) -> None:
    """A query the extractor reads as naming nothing would pass the check above unread."""
    assert [query for query, names in queries(dashboard).items() if not names] == []


def test_the_scrape_holds_the_series_the_dashboard_is_about(exported: set[str]) -> None:
    assert {
        "imagine_jobs_total",
        "imagine_jobs_accepted_total",
        "imagine_queue_length",
        "imagine_store_up",
        "imagine_generation_seconds_bucket",
        "imagine_http_requests_total",
    } <= exported
    assert "imagine_jobs" not in exported  # Prometheus stores a counter under its _total name


def test_a_wrong_metric_name_is_caught(dashboard: dict[str, Any], exported: set[str]) -> None:
    wrong = copy.deepcopy(dashboard)
    target = next(panel for panel in panels(wrong["panels"]) if panel.get("targets"))["targets"][0]
    target["expr"] = 'sum by (outcome) (rate(imagine_jobs_finished_total{outcome!="x"}[$__rate_interval]))'
    assert list(unexported(wrong, exported).values()) == [["imagine_jobs_finished_total"]]
    wrong["templating"]["list"][-1]["query"]["query"] = "label_values(imagine_instances, instance)"
    assert ["imagine_instances"] in unexported(wrong, exported).values()


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        (
            "histogram_quantile(0.9, sum by (le) ("
            'rate(imagine_generation_seconds_bucket{instance=~"$instance"}[$__rate_interval])))',
            {"imagine_generation_seconds_bucket"},
        ),
        (
            "sum(rate(a_sum[5m] offset 1h)) / ignoring (job) sum without (le) (rate(a_count[${interval}]))",
            {"a_sum", "a_count"},
        ),
        ("up == bool 1 and on (instance) group_left (version) build_info", {"up", "build_info"}),
        ("max_over_time(queue[1h:5m]) > 1e3 or vector(0)", {"queue"}),
        ('count({__name__=~"imagine_.*", route="rate(x)"})', set()),
        ("imagine_jobs", {"imagine_jobs"}),
    ],
)
def test_metric_names_reads_promql(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_variable_queries_name_their_series() -> None:
    assert variable_metric_names('label_values(imagine_store_up{job="x"}, instance)') == {"imagine_store_up"}
    assert variable_metric_names("label_values(instance)") == set()
    assert variable_metric_names("query_result(topk(3, imagine_queue_length))") == {"imagine_queue_length"}
