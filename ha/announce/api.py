"""``POST /v1/director/drain`` (``{"grace": SECONDS, "exit": BOOL}``, both optional) and ``POST /v1/director/enable``:
``lvs-ha drain-director`` and ``lvs-ha enable-director`` (``ha.announce.link``)."""

from __future__ import annotations

import logging

from aiohttp import web

from ha.api import CONTROLLER, BadRequest, Conflict, _body, caller

log = logging.getLogger(__name__)


async def post_drain_director(request: web.Request) -> web.Response:
    data = await _body(request)
    grace = data.get("grace")
    if grace is not None and (isinstance(grace, bool) or not isinstance(grace, int | float) or not 0 <= grace <= 86400):
        raise BadRequest("'grace' must be a number of seconds 0..86400")
    exit_ = data.get("exit", False)
    if not isinstance(exit_, bool):
        raise BadRequest("'exit' must be true or false")
    who = caller(request)
    log.info("api: drain-director grace=%s exit=%s requested by %s", grace, exit_, who)
    ctl = request.app[CONTROLLER]
    if not hasattr(ctl, "drain_director"):
        raise Conflict("this daemon cannot drain a director")
    return web.json_response(await ctl.drain_director(None if grace is None else float(grace), exit_, who))


async def post_enable_director(request: web.Request) -> web.Response:
    await _body(request)
    who = caller(request)
    log.info("api: enable-director requested by %s", who)
    ctl = request.app[CONTROLLER]
    if not hasattr(ctl, "enable_director"):
        raise Conflict("this daemon cannot enable a director")
    return web.json_response(await ctl.enable_director(who))


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/director/drain", post_drain_director)
    app.router.add_post("/v1/director/enable", post_enable_director)
