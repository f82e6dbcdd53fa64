"""A gateway in a child process, for tests that need a second process or a SIGKILL.

python -m tests.helpers.service_child DB burst USER N PREFIX
    submit N concurrent jobs as USER; print one JSON line {"accepted": k, "refused": m}
python -m tests.helpers.service_child DB crash POINT JOB_ID
    submit one job and stop dead at POINT ("reserved", "generating", "generated"),
    printing POINT so the parent can SIGKILL it there
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from gateway import ImagineError, ImagineService, Settings
from gateway.fake_backend import FakeBackend
from storage import Database


async def hang(point: str) -> None:
    print(point, flush=True)
    await asyncio.Event().wait()


async def main(argv: list[str]) -> None:
    db_path, mode, *rest = argv
    settings = Settings.from_env(
        {
            "IMAGINE_DB": db_path,
            "IMAGINE_BACKEND": "fake",
            "IMAGINE_DAILY_QUOTA": "5",
            "IMAGINE_MAX_QUEUED_PER_USER": "1000",
            "IMAGINE_MAX_QUEUE": "1000",
        },
        env_file=None,
    )
    db = await Database.open(db_path)
    backend = FakeBackend(settings)
    service = ImagineService(settings, db, backend)
    await service.start()
    if mode == "burst":
        user, n, prefix = rest[0], int(rest[1]), rest[2]
        print("started", flush=True)
        sys.stdin.readline()  # both processes start their burst together
        outcomes = await asyncio.gather(
            *(service.submit(user, "a fox", job_id=f"{prefix}{i}") for i in range(n)),
            return_exceptions=True,
        )
        accepted = [o for o in outcomes if not isinstance(o, BaseException)]
        await asyncio.gather(*(job.wait() for job in accepted))  # type: ignore[union-attr]
        refused = [o for o in outcomes if isinstance(o, ImagineError)]
        print(json.dumps({"accepted": len(accepted), "refused": len(refused)}), flush=True)
        await service.close()
        await db.close()
    elif mode == "crash":
        point, job_id = rest
        if point == "reserved":

            async def stop_before_running(*args: Any, **kwargs: Any) -> bool:
                await hang(point)
                return False

            db.mark_running = stop_before_running  # type: ignore[method-assign]
        elif point == "generating":
            backend.delay = 3600
            original = backend.generate

            async def announce(*args: Any, **kwargs: Any) -> Any:
                print(point, flush=True)
                return await original(*args, **kwargs)

            backend.generate = announce  # type: ignore[method-assign]
        elif point == "generated":

            async def stop_before_settle(*args: Any, **kwargs: Any) -> None:
                await hang(point)

            db.settle = stop_before_settle  # type: ignore[method-assign,assignment]
        job = await service.submit("cli:victim", "a fox --n 2", job_id=job_id)
        await job.wait()
        print("finished", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
