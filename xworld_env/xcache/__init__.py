"""X-Cache and the baseline cache policies, as executors of the DiT's block loop.

``make_executor`` turns what a user passes (a policy name, a config object or dict, or an
executor) into an executor the engine can run.
"""

from __future__ import annotations

from typing import Any

from xworld_env.model.dit import FullCompute
from xworld_env.xcache.baselines import (
    FirstBlockCache,
    FirstBlockCacheConfig,
    StaticReuse,
    StaticReuseConfig,
)
from xworld_env.xcache.controller import XCache, XCacheConfig

#: Policy names accepted wherever a cache policy is chosen.
POLICIES = ("xcache", "none", "fbcache", "static")

_CONFIGS = {"xcache": XCacheConfig, "fbcache": FirstBlockCacheConfig, "static": StaticReuseConfig}
_EXECUTORS = {XCacheConfig: XCache, FirstBlockCacheConfig: FirstBlockCache,
              StaticReuseConfig: StaticReuse}

__all__ = [
    "POLICIES",
    "FirstBlockCache",
    "FirstBlockCacheConfig",
    "StaticReuse",
    "StaticReuseConfig",
    "XCache",
    "XCacheConfig",
    "make_executor",
]


def make_executor(cache: Any = "xcache", **settings: Any):
    """An executor from a policy name (with optional settings), a config, or a dict.

    Args:
        cache: ``"xcache"``, ``"none"`` (full compute), ``"fbcache"``, ``"static"``; or an
            ``XCacheConfig`` / ``FirstBlockCacheConfig`` / ``StaticReuseConfig``; or a dict with
            a ``policy`` key and that policy's settings; or an executor (returned as is).
        **settings: settings of the named policy.
    """
    if isinstance(cache, dict):
        settings = {**cache, **settings}
        cache = settings.pop("policy", "xcache")
    if isinstance(cache, str):
        if cache not in POLICIES:
            raise ValueError(f"unknown cache policy {cache!r}; accepted: {', '.join(POLICIES)}")
        if cache == "none":
            if settings:
                raise ValueError(f"cache 'none' takes no settings, got {sorted(settings)}")
            return FullCompute()
        config_cls = _CONFIGS[cache]
        try:
            cache = config_cls(**settings)
        except TypeError as err:
            names = sorted(config_cls.__dataclass_fields__)
            raise ValueError(f"bad {cache} setting: {err}; accepted: {names}") from None
    elif settings:
        raise ValueError("settings can only go with a policy name")
    executor_cls = _EXECUTORS.get(type(cache))
    if executor_cls is not None:
        return executor_cls(cache)
    if callable(getattr(cache, "run", None)):
        return cache
    raise TypeError(
        f"cache must be a policy name ({', '.join(POLICIES)}), a policy config, a dict or an "
        f"executor; got {type(cache).__name__}"
    )
