"""Counters and histograms for ``GET /metrics``, kept by ``prometheus_client``.

Each :class:`Metrics` owns its own :class:`~prometheus_client.CollectorRegistry` (never the
library's global one): one process may hold several services (the tests do), and each one's
``/metrics`` shows only its own figures.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

GENERATION_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.jobs = Counter("imagine_jobs", "Jobs by outcome.", ["outcome"], registry=r)
        self.accepted_jobs = Counter("imagine_jobs_accepted", "Jobs accepted (credits reserved).", registry=r)
        self.rejections = Counter(
            "imagine_rejections", "Requests refused before any charge, by reason.", ["reason"], registry=r
        )
        self.backend_errors = Counter(
            "imagine_backend_errors", "Backend failures by kind.", ["kind"], registry=r
        )
        self.queue_length = Gauge(
            "imagine_queue_length", "Jobs queued or running in this process.", registry=r
        )
        self.credits_spent = Counter(
            "imagine_credits_spent", "Credits charged for delivered images.", registry=r
        )
        self.credits_refunded = Counter("imagine_credits_refunded", "Credits given back.", registry=r)
        self.gpu_seconds = Counter("imagine_gpu_seconds", "Seconds of backend generation time.", registry=r)
        self.cost_per_image = Gauge(
            "imagine_estimated_cost_per_image", "Estimated GPU cost of one delivered image.", registry=r
        )
        self.generation = Histogram(
            "imagine_generation_seconds",
            "Backend generation time per job.",
            buckets=GENERATION_BUCKETS,
            registry=r,
        )
        self.http_requests = Counter(
            "imagine_http_requests",
            "Web front requests by route and status.",
            ["route", "status"],
            registry=r,
        )
        self._cost = 0.0
        self._images = 0

    def accepted(self, queue_length: int) -> None:
        self.accepted_jobs.inc()
        self.queue_length.set(queue_length)

    def rejected(self, reason: str) -> None:
        self.rejections.labels(reason=reason).inc()

    def backend_error(self, kind: str) -> None:
        self.backend_errors.labels(kind=kind).inc()

    def http_request(self, route: str, status: int) -> None:
        self.http_requests.labels(route=route, status=str(status)).inc()

    def job_finished(
        self,
        outcome: str,
        *,
        spent: int = 0,
        refunded: int = 0,
        seconds: float = 0.0,
        cost_per_second: float = 0.0,
    ) -> None:
        self.jobs.labels(outcome=outcome).inc()
        self.credits_spent.inc(spent)
        self.credits_refunded.inc(refunded)
        self._images += spent
        if seconds:
            self.generation.observe(seconds)
            self.gpu_seconds.inc(seconds)
            self._cost += seconds * cost_per_second
        self.cost_per_image.set(self._cost / self._images if self._images else 0.0)

    def render(self, *, queue_length: int | None = None) -> str:
        """The Prometheus text format (0.0.4) of this service's registry."""
        if queue_length is not None:
            self.queue_length.set(queue_length)
        return generate_latest(self.registry).decode("utf-8")
