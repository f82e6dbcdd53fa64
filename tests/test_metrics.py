"""The series ``/metrics`` has always shown, now kept by prometheus_client, one registry per service."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.metrics import Metrics


def samples(metrics: Metrics, **kwargs: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(metrics.render(**kwargs))
        for sample in family.samples
    }


def test_the_series_keep_their_names_and_labels() -> None:
    metrics = Metrics()
    metrics.accepted(queue_length=1)
    metrics.rejected("quota")
    metrics.backend_error("BackendError")
    metrics.http_request("/api/jobs", 202)
    metrics.job_finished("succeeded", spent=2, seconds=1.5, cost_per_second=0.01)
    metrics.job_finished("failed", refunded=1)
    seen = samples(metrics, queue_length=3)
    assert seen[("imagine_jobs_total", (("outcome", "succeeded"),))] == 1
    assert seen[("imagine_jobs_total", (("outcome", "failed"),))] == 1
    assert seen[("imagine_jobs_accepted_total", ())] == 1
    assert seen[("imagine_rejections_total", (("reason", "quota"),))] == 1
    assert seen[("imagine_backend_errors_total", (("kind", "BackendError"),))] == 1
    assert seen[("imagine_http_requests_total", (("route", "/api/jobs"), ("status", "202")))] == 1
    assert seen[("imagine_queue_length", ())] == 3
    assert seen[("imagine_credits_spent_total", ())] == 2
    assert seen[("imagine_credits_refunded_total", ())] == 1
    assert seen[("imagine_gpu_seconds_total", ())] == 1.5
    assert seen[("imagine_estimated_cost_per_image", ())] == pytest.approx(0.0075)
    assert seen[("imagine_generation_seconds_count", ())] == 1
    assert seen[("imagine_generation_seconds_bucket", (("le", "2.0"),))] == 1
    assert seen[("imagine_generation_seconds_bucket", (("le", "1.0"),))] == 0


def test_each_service_counts_only_its_own() -> None:
    first, second = Metrics(), Metrics()
    first.job_finished("succeeded", spent=1)
    assert samples(first)[("imagine_credits_spent_total", ())] == 1
    assert samples(second)[("imagine_credits_spent_total", ())] == 0
    assert ("imagine_jobs_total", (("outcome", "succeeded"),)) not in samples(second)
