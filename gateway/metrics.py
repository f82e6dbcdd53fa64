"""Counters and histograms for ``GET /metrics`` in the Prometheus text format.

Small on purpose: a handful of series, updated on the event loop, rendered on demand.
"""

from __future__ import annotations

import bisect
from collections import Counter

GENERATION_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)


class Histogram:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.total = 0.0
        self.n = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.n += 1

    def render(self, name: str) -> list[str]:
        lines, running = [], 0
        for bound, count in zip(self.buckets, self.counts, strict=False):
            running += count
            lines.append(f'{name}_bucket{{le="{bound:g}"}} {running}')
        lines.append(f'{name}_bucket{{le="+Inf"}} {self.n}')
        lines.append(f"{name}_sum {self.total:.6f}")
        lines.append(f"{name}_count {self.n}")
        return lines


class Metrics:
    def __init__(self) -> None:
        self.jobs = Counter[str]()
        self.rejections = Counter[str]()
        self.backend_errors = Counter[str]()
        self.http_requests = Counter[tuple[str, int]]()
        self.accepted_total = 0
        self.queue_length = 0
        self.credits_spent = 0
        self.credits_refunded = 0
        self.gpu_seconds = 0.0
        self.cost = 0.0
        self.images = 0
        self.generation = Histogram(GENERATION_BUCKETS)

    def accepted(self, queue_length: int) -> None:
        self.accepted_total += 1
        self.queue_length = queue_length

    def rejected(self, reason: str) -> None:
        self.rejections[reason] += 1

    def backend_error(self, kind: str) -> None:
        self.backend_errors[kind] += 1

    def job_finished(
        self,
        outcome: str,
        *,
        spent: int = 0,
        refunded: int = 0,
        seconds: float = 0.0,
        cost_per_second: float = 0.0,
    ) -> None:
        self.jobs[outcome] += 1
        self.credits_spent += spent
        self.credits_refunded += refunded
        self.images += spent
        if seconds:
            self.generation.observe(seconds)
            self.gpu_seconds += seconds
            self.cost += seconds * cost_per_second

    def render(self, *, queue_length: int | None = None) -> str:
        if queue_length is not None:
            self.queue_length = queue_length
        out = [
            "# HELP imagine_jobs_total Jobs by outcome.",
            "# TYPE imagine_jobs_total counter",
        ]
        out += [f'imagine_jobs_total{{outcome="{k}"}} {v}' for k, v in sorted(self.jobs.items())]
        out += [
            "# HELP imagine_jobs_accepted_total Jobs accepted (credits reserved).",
            "# TYPE imagine_jobs_accepted_total counter",
            f"imagine_jobs_accepted_total {self.accepted_total}",
            "# HELP imagine_rejections_total Requests refused before any charge, by reason.",
            "# TYPE imagine_rejections_total counter",
        ]
        out += [f'imagine_rejections_total{{reason="{k}"}} {v}' for k, v in sorted(self.rejections.items())]
        out += [
            "# HELP imagine_backend_errors_total Backend failures by kind.",
            "# TYPE imagine_backend_errors_total counter",
        ]
        out += [
            f'imagine_backend_errors_total{{kind="{k}"}} {v}' for k, v in sorted(self.backend_errors.items())
        ]
        out += [
            "# HELP imagine_queue_length Jobs queued or running in this process.",
            "# TYPE imagine_queue_length gauge",
            f"imagine_queue_length {self.queue_length}",
            "# HELP imagine_credits_spent_total Credits charged for delivered images.",
            "# TYPE imagine_credits_spent_total counter",
            f"imagine_credits_spent_total {self.credits_spent}",
            "# HELP imagine_credits_refunded_total Credits given back.",
            "# TYPE imagine_credits_refunded_total counter",
            f"imagine_credits_refunded_total {self.credits_refunded}",
            "# HELP imagine_gpu_seconds_total Seconds of backend generation time.",
            "# TYPE imagine_gpu_seconds_total counter",
            f"imagine_gpu_seconds_total {self.gpu_seconds:.6f}",
            "# HELP imagine_estimated_cost_per_image Estimated GPU cost of one delivered image.",
            "# TYPE imagine_estimated_cost_per_image gauge",
            f"imagine_estimated_cost_per_image {self.cost / self.images if self.images else 0.0:.6f}",
            "# HELP imagine_generation_seconds Backend generation time per job.",
            "# TYPE imagine_generation_seconds histogram",
        ]
        out += self.generation.render("imagine_generation_seconds")
        if self.http_requests:
            out += [
                "# HELP imagine_http_requests_total Web front requests by route and status.",
                "# TYPE imagine_http_requests_total counter",
            ]
            out += [
                f'imagine_http_requests_total{{route="{route}",status="{status}"}} {n}'
                for (route, status), n in sorted(self.http_requests.items())
            ]
        return "\n".join(out) + "\n"
