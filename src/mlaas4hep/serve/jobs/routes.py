"""The jobs API over HTTP (``mlaas4hep serve --jobs``).

==========================  ==================================================================
``POST /jobs``              a multipart form: ``config`` (the training YAML) and ``model`` (the
                            Python model file), or ``folder`` (a ``.tar.gz`` of MLaaS4HEP's
                            folder: a model file, ``files.txt``, ``labels.txt``, ``params.json``);
                            optional ``name`` (of the model it installs; default the model
                            file's), ``cpus``, ``memory`` (GB), ``device``, ``time_limit`` (s).
                            Answers 202 and the job (``id``, ``state: queued``) at once.
``GET /jobs``               the caller's jobs, newest first (``{"jobs": [...]}``)
``GET /jobs/{id}``          one job: ``state``, ``progress`` (epoch, events, events_per_s,
                            validation metrics), timestamps, ``error`` (one line), ``model``
``GET /jobs/{id}/logs``     its log, streamed while it runs (``?follow=0``: what there is now)
``DELETE /jobs/{id}``       cancel it: its processes end; answers the job once it is final
``GET /jobs/{id}/bundle``   the trained bundle, ``.tar.gz``
==========================  ==================================================================

Every route needs a bearer token: the server's (the operator, who sees every
job) or an OIDC access token (:mod:`mlaas4hep.serve.identity`); a user sees and
cancels only their own jobs (403 otherwise). Errors are ``{"error": "..."}``
as everywhere on the server.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from ... import bundle_archive as archive
from ...bundle import BundleError
from .. import forms
from ..errors import BodyTimedOut, InvalidRequest, TooLarge
from ..http import json_response, plane_of
from ..identity import Identity, User
from .manager import JobManager, Submission
from .store import FINAL

#: Largest config, params or list file of a job (the model file and folder have the upload limit).
MAX_TEXT = 4 * 2**20


def _jobs(request: Request) -> JobManager:
    jobs: JobManager = request.app.state.jobs
    return jobs


async def _user(request: Request) -> User:
    identity: Identity = request.app.state.identity
    return await plane_of(request).blocking(identity.user, request.headers.get("authorization"))


async def submit(request: Request) -> Response:
    user = await _user(request)  # before reading the upload
    limit = plane_of(request).config.max_upload
    sub = await _submission(request, limit)
    record = await plane_of(request).blocking(_jobs(request).submit, user, sub)
    return json_response(record, status=202)


def _number(form: Any, key: str, kind: type, default: Any) -> Any:
    value = form.get(key)
    if value is None or value == "":
        return default
    try:
        return kind(value)
    except (TypeError, ValueError):
        what = "a whole number" if kind is int else "a number"
        raise InvalidRequest(f"{key!r} must be {what}, not {str(value)[:40]!r}") from None


async def _submission(request: Request, limit: int) -> Submission:
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise InvalidRequest("POST /jobs takes a multipart form: 'config' and 'model', or 'folder'")
    request = forms.limited(request, limit, "submission")
    try:
        form = await request.form(max_files=4, max_fields=16)
    except (TooLarge, BodyTimedOut):
        raise
    except Exception as err:  # starlette's MultiPartException
        raise InvalidRequest(f"malformed multipart form: {getattr(err, 'detail', err)}") from None
    try:
        folder, config, model = form.get("folder"), form.get("config"), form.get("model")
        extra: dict[str, Any] = {}
        if isinstance(folder, UploadFile):
            data = await forms.read_file(folder, limit, "folder")
            try:
                files = archive.read_archive(
                    data, max_member=limit, max_total=limit, suffixes=(".py", ".txt", ".json")
                )
            except BundleError as err:
                raise InvalidRequest(f"the folder: {err}") from None
            kind = "folder"
        elif config is not None and isinstance(model, UploadFile):
            text = (
                await forms.read_file(config, MAX_TEXT, "config")
                if isinstance(config, UploadFile)
                else config.encode()
            )
            files = {"config.yaml": text, "model.py": await forms.read_file(model, limit, "model file")}
            extra["model_filename"] = model.filename or "model.py"
            extra["config_filename"] = config.filename if isinstance(config, UploadFile) else "config.yaml"
            kind = "config"
        else:
            raise InvalidRequest(
                "the form needs 'config' (the training YAML) and 'model' (the Python model file), "
                "or 'folder' (a .tar.gz of the model file, files.txt, labels.txt, params.json)"
            )
        name = form.get("name")
        device = form.get("device")
        return Submission(
            kind,
            files,
            name=name if isinstance(name, str) and name else None,
            cpus=_number(form, "cpus", int, 1),
            memory_gb=_number(form, "memory", float, None),
            device=device if isinstance(device, str) and device else "cpu",
            time_limit=_number(form, "time_limit", float, None),
            extra=extra,
        )
    finally:
        await form.close()


async def list_jobs(request: Request) -> Response:
    user = await _user(request)
    return json_response({"jobs": await plane_of(request).blocking(_jobs(request).list, user)})


async def get_job(request: Request) -> Response:
    user = await _user(request)
    return json_response(
        await plane_of(request).blocking(_jobs(request).get, user, request.path_params["id"])
    )


async def cancel_job(request: Request) -> Response:
    user, jobs, job_id = await _user(request), _jobs(request), request.path_params["id"]
    plane = plane_of(request)
    record = await plane.blocking(jobs.cancel, user, job_id)
    for _ in range(100):  # the scheduler ends it within a tick (a running job: within its grace time)
        if record["state"] in FINAL:
            break
        await asyncio.sleep(0.1)
        record = await plane.blocking(jobs.get, user, job_id)
    return json_response(record)


async def logs(request: Request) -> Response:
    user, jobs, job_id = await _user(request), _jobs(request), request.path_params["id"]
    path = await plane_of(request).blocking(jobs.log_path, user, job_id)
    follow = request.query_params.get("follow", "1") not in ("0", "false", "no")

    async def chunks() -> AsyncIterator[bytes]:
        offset = 0
        while True:
            final = jobs.store.get(job_id)["state"] in FINAL
            try:
                with open(path, "rb") as f:
                    f.seek(offset)
                    data = f.read(2**20)
            except FileNotFoundError:
                data = b""
            if data:
                offset += len(data)
                yield data
                continue
            if final or not follow:
                return
            await asyncio.sleep(0.25)

    return StreamingResponse(chunks(), media_type="text/plain; charset=utf-8")


async def bundle(request: Request) -> Response:
    user = await _user(request)
    fname, data = await plane_of(request).blocking(_jobs(request).bundle, user, request.path_params["id"])
    return Response(
        data,
        media_type="application/gzip",
        headers={"Content-Disposition": f'attachment; filename="{fname}"'},
    )


def routes() -> list[Route]:
    return [
        Route("/jobs", submit, methods=["POST"]),
        Route("/jobs", list_jobs, methods=["GET"]),
        Route("/jobs/{id}", get_job, methods=["GET"]),
        Route("/jobs/{id}", cancel_job, methods=["DELETE"]),
        Route("/jobs/{id}/logs", logs, methods=["GET"]),
        Route("/jobs/{id}/bundle", bundle, methods=["GET"]),
    ]
