"""The ``replicate`` backend: the real replicate client against a local fake of Replicate's HTTP API."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import pytest

from gateway import ImagineService, JobFailed, JobStatus, Settings, SettingsError, create_backend
from gateway.cog import PNG_SIGNATURE, png_from_data_uri
from gateway.fake_backend import solid_png
from gateway.picture import vary
from gateway.replicate_backend import ReplicateBackend
from gateway.request import ImageRequest, parse_prompt, validate
from gateway.result_fetch import LoopbackDelivery, RefusedURL, check_result_url, is_public_address
from storage import Database
from tests.fakes.replicate_server import VERSION, FakeReplicate
from tests.helpers.png import png_size

USER = "discord:7"
QUOTA = 25


@pytest.fixture
async def fake() -> AsyncIterator[FakeReplicate]:
    server = await FakeReplicate().start()
    yield server
    await server.close()


def replicate_settings(data_dir: Path, fake: FakeReplicate, **env: str) -> Settings:
    return Settings.from_env(
        {
            "IMAGINE_DB": str(data_dir / "imagine.sqlite3"),
            "IMAGINE_BACKEND": "replicate",
            "REPLICATE_API_TOKEN": fake.token,
            "REPLICATE_BASE_URL": fake.base_url,
            "IMAGINE_REPLICATE_MODEL": "stability-ai/stable-diffusion",
            "IMAGINE_DAILY_QUOTA": str(QUOTA),
            **env,
        },
        env_file=None,
    )


ServiceFactory = Callable[..., Awaitable[ImagineService]]


@pytest.fixture
async def service(data_dir: Path, fake: FakeReplicate) -> AsyncIterator[ServiceFactory]:
    made: list[tuple[ImagineService, ReplicateBackend, Database]] = []

    async def make(*, loopback_delivery: bool = True, **env: str) -> ImagineService:
        """``loopback_delivery=False`` is the backend exactly as the CLI makes it."""
        settings = replicate_settings(data_dir, fake, **env)
        backend = create_backend(settings)
        assert isinstance(backend, ReplicateBackend)
        if loopback_delivery:
            # Mocks what cannot run here, public DNS and TLS: replicate.delivery is the fake.
            backend = ReplicateBackend(settings, loopback_delivery_for_tests=LoopbackDelivery(fake.port))
        backend.poll_interval = 0.02
        db = await Database.open(settings.store)
        await backend.start()
        svc = ImagineService(settings, db, backend)
        await svc.start()
        made.append((svc, backend, db))
        return svc

    yield make
    for svc, backend, db in made:
        await svc.close()
        await backend.close()
        assert await db.check_ledger() == []
        assert await db.open_jobs() == []
        await db.close()


async def remaining(svc: ImagineService) -> int:
    return (await svc.quota(USER)).remaining


async def test_success_sends_replicate_field_names_and_fetches_images(
    service: ServiceFactory, fake: FakeReplicate
) -> None:
    svc = await service()
    job = await svc.submit(USER, "a lighthouse --seed 5 --size 384x256 --n 2 --steps 30", job_id="discord:1")
    steps_seen = [u.step for u in [u async for u in job.updates()] if u.status is JobStatus.RUNNING]
    result = await job.wait()
    assert len(result.images) == 2 and all(img.startswith(PNG_SIGNATURE) for img in result.images)
    assert png_size(result.images[0]) == (384, 256)
    assert result.seeds == [5, 6]
    assert result.model == "replicate:stability-ai/stable-diffusion"
    assert any(0 < s < 30 for s in steps_seen), steps_seen  # progress from the model's logs
    (prediction,) = fake.predictions.values()
    assert prediction.input == {
        "prompt": "a lighthouse",
        "negative_prompt": "",
        "width": 384,
        "height": 256,
        "num_outputs": 2,
        "num_inference_steps": 30,
        "guidance_scale": 7.5,
        "scheduler": "DPMSolverMultistep",
        "seed": 5,
    }
    api = [h for _, path, h in fake.requests if path.startswith("/v1/")]
    files = [h for _, path, h in fake.requests if path.startswith("/files/")]
    assert all(h["authorization"] == f"Bearer {fake.token}" for h in api)
    assert len(files) == 2 and all("authorization" not in h for h in files)  # the token stays with the API
    assert all(h["host"] == "replicate.delivery" for h in files)  # the name, at the address checked
    assert await remaining(svc) == QUOTA - 2


async def test_a_failed_prediction_is_refunded_with_its_reason(
    service: ServiceFactory, fake: FakeReplicate
) -> None:
    fake.outcome = ("failed", "NSFW content detected. Try running it again, or try a different prompt.")
    svc = await service()
    job = await svc.submit(USER, "a fox --seed 1", job_id="discord:2")
    with pytest.raises(JobFailed) as info:
        await job.wait()
    assert "Replicate: NSFW content detected" in str(info.value)
    assert "refunded" in str(info.value)
    assert await remaining(svc) == QUOTA


@pytest.mark.parametrize(
    ("outcome", "words"), [("canceled", "cancelled on Replicate"), ("aborted", "aborted")]
)
async def test_canceled_and_aborted_are_refunded(
    service: ServiceFactory, fake: FakeReplicate, outcome: str, words: str
) -> None:
    fake.outcome = outcome
    svc = await service()
    job = await svc.submit(USER, "a fox --seed 1", job_id="discord:3")
    with pytest.raises(JobFailed, match=words):
        await job.wait()
    assert await remaining(svc) == QUOTA


async def test_a_timeout_cancels_the_prediction_on_replicate(
    service: ServiceFactory, fake: FakeReplicate
) -> None:
    fake.outcome = "hang"
    svc = await service(IMAGINE_BACKEND_TIMEOUT="1")
    job = await svc.submit(USER, "a fox --seed 1", job_id="discord:4")
    with pytest.raises(JobFailed, match="longer than 1 s"):
        await job.wait()
    for _ in range(200):
        if fake.cancelled:
            break
        await asyncio.sleep(0.02)
    assert fake.cancelled == list(fake.predictions)
    assert await remaining(svc) == QUOTA


async def test_a_user_cancel_cancels_the_prediction(service: ServiceFactory, fake: FakeReplicate) -> None:
    fake.outcome = "hang"
    svc = await service()
    job = await svc.submit(USER, "a fox --seed 1", job_id="discord:5")
    async for update in job.updates():
        if update.step > 0:
            break
    assert await svc.cancel("discord:5", by=USER)
    with pytest.raises(JobFailed, match="cancelled"):
        await job.wait()
    for _ in range(200):
        if fake.cancelled:
            break
        await asyncio.sleep(0.02)
    assert fake.cancelled == list(fake.predictions)
    assert await remaining(svc) == QUOTA


async def test_a_community_model_runs_its_latest_version(
    service: ServiceFactory, fake: FakeReplicate
) -> None:
    fake.versioned_only.add("stability-ai/stable-diffusion")
    svc = await service()
    job = await svc.submit(USER, "a fox --seed 1", job_id="discord:6")
    await job.wait()
    (prediction,) = fake.predictions.values()
    assert prediction.version == VERSION
    assert isinstance(svc.backend, ReplicateBackend) and svc.backend.version == VERSION


async def test_a_rate_limited_create_is_tried_again(service: ServiceFactory, fake: FakeReplicate) -> None:
    fake.rate_limited_creates = 2  # answered after 0.5 s and 1 s
    svc = await service()
    job = await svc.submit(USER, "a fox --seed 1", job_id="discord:8")
    await job.wait()
    creates = [p for m, p, _ in fake.requests if m == "POST"]
    assert creates == ["/v1/models/stability-ai/stable-diffusion/predictions"] * 3
    assert len(fake.predictions) == 1


async def test_a_pinned_version_is_used_as_given(service: ServiceFactory, fake: FakeReplicate) -> None:
    svc = await service(IMAGINE_REPLICATE_MODEL=f"stability-ai/stable-diffusion:{VERSION}")
    job = await svc.submit(USER, "a fox --seed 1", job_id="discord:7")
    await job.wait()
    assert [p for m, p, _ in fake.requests if m == "POST"] == ["/v1/predictions"]


async def test_webp_output_becomes_png(service: ServiceFactory, fake: FakeReplicate) -> None:
    fake.image_format = "WEBP"
    svc = await service()
    job = await svc.submit(USER, "a fox --seed 1", job_id="discord:8")
    result = await job.wait()
    assert result.images[0].startswith(PNG_SIGNATURE)


async def test_a_wrong_token_names_the_variable_not_the_token(
    service: ServiceFactory, fake: FakeReplicate
) -> None:
    svc = await service(REPLICATE_API_TOKEN="r8_wrong")
    job = await svc.submit(USER, "a fox --seed 1", job_id="discord:9")
    with pytest.raises(JobFailed) as info:
        await job.wait()
    assert "REPLICATE_API_TOKEN" in str(info.value) and "r8_wrong" not in str(info.value)
    assert await remaining(svc) == QUOTA


def test_the_token_is_required(data_dir: Path, fake: FakeReplicate) -> None:
    settings = replicate_settings(data_dir, fake).with_overrides(replicate_api_token=None)
    with pytest.raises(SettingsError, match="REPLICATE_API_TOKEN"):
        ReplicateBackend(settings)


def test_a_bad_model_reference_names_the_variable(data_dir: Path, fake: FakeReplicate) -> None:
    settings = replicate_settings(data_dir, fake, IMAGINE_REPLICATE_MODEL="stable-diffusion")
    with pytest.raises(SettingsError, match="IMAGINE_REPLICATE_MODEL"):
        ReplicateBackend(settings)


async def test_sync_mode_data_uris_need_no_fetch(service: ServiceFactory, fake: FakeReplicate) -> None:
    fake.output_url = "data"
    svc = await service(loopback_delivery=False)
    job = await svc.submit(USER, "a fox --seed 1 --n 2", job_id="discord:20")
    result = await job.wait()
    assert len(result.images) == 2 and all(img.startswith(PNG_SIGNATURE) for img in result.images)
    assert not [p for _, p, _ in fake.requests if not p.startswith("/v1/")]


async def test_a_redirect_within_the_delivery_hosts_is_followed(
    service: ServiceFactory, fake: FakeReplicate
) -> None:
    fake.output_url = "https://replicate.delivery/redirect/{name}"
    fake.redirect_to = "https://pbxt.replicate.delivery/files/{name}"
    svc = await service()
    job = await svc.submit(USER, "a fox --seed 1", job_id="discord:21")
    assert (await job.wait()).images[0].startswith(PNG_SIGNATURE)
    hops = [(p.split("/")[1], h["host"]) for _, p, h in fake.requests if not p.startswith("/v1/")]
    assert hops == [("redirect", "replicate.delivery"), ("files", "pbxt.replicate.delivery")]


async def test_an_oversized_image_is_cut_off_and_refunded(
    service: ServiceFactory, fake: FakeReplicate
) -> None:
    fake.image_format = "huge"
    svc = await service()
    job = await svc.submit(USER, "a fox --seed 1", job_id="discord:22")
    with pytest.raises(JobFailed, match="larger than 20 MB"):
        await job.wait()
    assert await remaining(svc) == QUOTA


UNSAFE_OUTPUTS = [
    "{base}/files/{name}",  # loopback, over http: what the fake used to hand out, and was fetched
    "http://replicate.delivery/files/{name}",
    "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
    "https://169.254.169.254/latest/meta-data/",
    "https://127.0.0.1/files/{name}",
    "https://[::1]/files/{name}",
    "https://metadata.google.internal/computeMetadata/v1/",
    "https://evil.example/{name}",
    "https://replicate.delivery.evil.example/{name}",
    "https://evilreplicate.delivery/{name}",
    "https://replicate.delivery:8443/files/{name}",
    "https://user:s3cretpw@replicate.delivery/files/{name}",
    # Hosts an operator added to IMAGINE_REPLICATE_DELIVERY_HOSTS still need a public address:
    "https://localhost/files/{name}",
    "https://10.1.2.3/files/{name}",
    "https://169.254.169.254/latest/meta-data/",
]


@pytest.mark.parametrize("output", UNSAFE_OUTPUTS)
async def test_the_default_refuses_unsafe_result_urls(
    service: ServiceFactory, fake: FakeReplicate, caplog: pytest.LogCaptureFixture, output: str
) -> None:
    fake.output_url = output
    svc = await service(
        loopback_delivery=False,
        IMAGINE_REPLICATE_DELIVERY_HOSTS="replicate.delivery,localhost,10.1.2.3,169.254.169.254",
    )
    with caplog.at_level(logging.WARNING, logger="imagine.backend.replicate"):
        job = await svc.submit(USER, "a fox --seed 1", job_id="discord:30")
        with pytest.raises(JobFailed) as info:
            await job.wait()
    assert "Replicate's image URL was refused" in str(info.value) and info.value.refunded
    assert "s3cretpw" not in str(info.value) and "169.254" not in str(info.value)
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "discord:30" in warning.getMessage() and "refused" in warning.getMessage()
    assert "s3cretpw" not in warning.getMessage()
    assert not [p for _, p, _ in fake.requests if not p.startswith("/v1/")], "the URL was fetched"
    assert await remaining(svc) == QUOTA


@pytest.mark.parametrize(
    "target",
    [
        "{base}/files/{name}",
        "http://replicate.delivery/files/{name}",
        "http://169.254.169.254/latest/meta-data/",
        "https://evil.example/{name}",
        "/../files/{name}?then=http",  # relative: stays on the host, so it is followed
    ],
)
async def test_a_redirect_away_from_the_delivery_hosts_is_refused(
    service: ServiceFactory, fake: FakeReplicate, target: str
) -> None:
    fake.output_url = "https://replicate.delivery/redirect/{name}"
    fake.redirect_to = target
    svc = await service()
    job = await svc.submit(USER, "a fox --seed 1", job_id="discord:31")
    fetched = lambda: [p for _, p, _ in fake.requests if p.startswith("/files/")]  # noqa: E731
    if target.startswith("/"):
        await job.wait()
        assert len(fetched()) == 1
        return
    with pytest.raises(JobFailed, match="Replicate's image URL was refused"):
        await job.wait()
    assert not fetched()
    assert await remaining(svc) == QUOTA


async def test_credentials_in_replicate_base_url_are_never_logged_or_shown(
    service: ServiceFactory, fake: FakeReplicate, caplog: pytest.LogCaptureFixture
) -> None:
    password = "pa55-in-the-url"
    fake.basic_auth = f"proxy:{password}"
    # Every logger, httpx's request lines included (an in-process CLI test may have quieted httpx).
    with caplog.at_level(logging.DEBUG), caplog.at_level(logging.DEBUG, logger="httpx"):
        svc = await service(REPLICATE_BASE_URL=fake.base_url.replace("http://", f"http://proxy:{password}@"))
        assert (await (await svc.submit(USER, "a fox --seed 1", job_id="discord:40")).wait()).images
        fake.outcome = ("failed", "out of memory")
        job = await svc.submit(USER, "a fox --seed 2", job_id="discord:41")
        with pytest.raises(JobFailed) as info:
            await job.wait()
    logged = [caplog.handler.format(record) for record in caplog.records]
    assert any("HTTP Request" in line for line in logged)  # httpx did log its requests
    for text in [*logged, str(info.value)]:
        assert password not in text, text


def test_delivery_hosts_are_configurable(data_dir: Path, fake: FakeReplicate) -> None:
    hosts = " Files.Example., cdn.example"
    settings = replicate_settings(data_dir, fake, IMAGINE_REPLICATE_DELIVERY_HOSTS=hosts)
    assert ReplicateBackend(settings).delivery_hosts == ("files.example", "cdn.example")
    assert replicate_settings(data_dir, fake).replicate_delivery_hosts == ("replicate.delivery",)
    with pytest.raises(SettingsError, match="IMAGINE_REPLICATE_DELIVERY_HOSTS"):
        replicate_settings(data_dir, fake, IMAGINE_REPLICATE_DELIVERY_HOSTS="https://cdn.example/")


def test_result_url_rules() -> None:
    hosts = ("replicate.delivery",)
    assert check_result_url(httpx.URL("https://replicate.delivery/x.png"), hosts) == "replicate.delivery"
    assert (
        check_result_url(httpx.URL("https://PBXT.Replicate.Delivery./x"), hosts) == "pbxt.replicate.delivery"
    )
    for bad in (
        "http://replicate.delivery/x",
        "https://replicate.delivery.evil/x",
        "ftp://replicate.delivery/",
    ):
        with pytest.raises(RefusedURL):
            check_result_url(httpx.URL(bad), hosts)


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("93.184.215.14", True),
        ("2606:4700::6810:84e5", True),
        ("127.0.0.1", False),
        ("::1", False),
        ("10.0.0.1", False),
        ("172.16.5.4", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),  # cloud metadata
        ("fd00:ec2::254", False),  # AWS metadata over IPv6
        ("100.64.0.1", False),  # carrier-grade NAT
        ("0.0.0.0", False),
        ("224.0.0.1", False),  # multicast (which Python 3.11 calls global)
        ("240.0.0.1", False),
        ("fe80::1", False),
        ("ff02::1", False),
        ("::ffff:127.0.0.1", False),
        ("::ffff:169.254.169.254", False),
        ("2002:7f00:1::1", False),  # 6to4 around 127.0.0.1
        ("64:ff9b::a9fe:a9fe", False),  # NAT64 around 169.254.169.254
        ("not an address", False),
    ],
)
def test_public_addresses(address: str, public: bool) -> None:
    assert is_public_address(address) is public


async def test_an_image_prompt_sends_image_and_prompt_strength_to_an_img2img_model(
    service: ServiceFactory, fake: FakeReplicate
) -> None:
    svc = await service(IMAGINE_REPLICATE_MODEL="stability-ai/stable-diffusion-img2img")
    request = parse_prompt(
        "a red fox --strength 0.4 --seed 2 --steps 20", image=solid_png(300, 200, (1, 2, 3))
    )
    job = await svc.submit(USER, request, job_id="discord:img")
    updates = [u async for u in job.updates() if u.status is JobStatus.RUNNING]
    result = await job.wait()
    assert png_size(result.images[0]) == (1024, 704)
    (prediction,) = fake.predictions.values()
    assert png_from_data_uri(prediction.input["image"]) == request.init_image
    assert prediction.input["prompt_strength"] == 0.4
    assert "imagine_kind" not in prediction.input  # Imagine's own field goes only to its worker
    assert {u.total_steps for u in updates} == {8}  # 0.4 x 20 steps, as the model's bar counts them
    assert await remaining(svc) == QUOTA - 1


@pytest.mark.parametrize(
    "model", ["stability-ai/stable-diffusion", f"stability-ai/stable-diffusion:{VERSION}"]
)
async def test_a_model_without_an_image_input_fails_the_job_naming_the_variable(
    service: ServiceFactory, fake: FakeReplicate, model: str
) -> None:
    svc = await service(IMAGINE_REPLICATE_MODEL=model)
    source = validate(ImageRequest(prompt="a lighthouse", seed=1))
    job = await svc.submit(USER, vary(source, solid_png(512, 512, (5, 5, 5))), job_id="discord:vary")
    with pytest.raises(JobFailed) as failed:
        await job.wait()
    assert failed.value.refunded
    assert "IMAGINE_REPLICATE_MODEL (stability-ai/stable-diffusion) takes no image" in str(failed.value)
    assert not fake.predictions
    assert await remaining(svc) == QUOTA
    # Text prompts still run on it.
    assert (await (await svc.submit(USER, "a lighthouse", job_id="discord:text")).wait()).images
