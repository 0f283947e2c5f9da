"""Manifest v1: hardened YAML load, schema validation, semantic checks, expansion into jobs.

``specs/manifest.schema.json`` is the single source of truth for the shape; this module adds
what a schema cannot say (files exist, ids unique, globs match) and turns every problem into a
:class:`~pipeline.errors.Diagnostic` with the manifest position, so ``validate`` can report all
of them at once. :mod:`pipeline.manifest.diagnostics` words the schema's own errors.
"""

from __future__ import annotations

import functools
import glob
import itertools
import json
import re
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema

from pipeline import providers
from pipeline.errors import Diagnostic, ManifestError
from pipeline.gcpause import gc_paused
from pipeline.jobs import InputRef, Job
from pipeline.manifest.callback import callback_config
from pipeline.manifest.diagnostics import report_schema_error
from pipeline.manifest.expand import Spec, assign_ids, format_path, regular_file, settings_of
from pipeline.manifest.model import MODES, Budget, Manifest, StorageConfig, prices_for
from pipeline.manifest.yamlsafe import LoadedYaml, PathKey, YamlProblem, load_file
from pipeline.providers.base import ProviderConfig, RateLimit
from pipeline.settings import DEFAULTS, public_url
from pipeline.storage.policy import S3_EXTRA_HINT, can_send_files, s3_available

SETTING_KEYS = ("mode", "character_orientation", "keep_original_sound", "prompt", "trim")
_ID_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
_GLOB_CHARS = re.compile(r"[*?\[]")
# S3's own rule for new buckets (R2, MinIO and GCS follow it): checked here for a clear message.
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_IP_LIKE = re.compile(r"\d+\.\d+\.\d+\.\d+")


@functools.cache
def schema() -> dict[str, Any]:
    """The manifest JSON schema, read from the installed package (never from the cwd)."""
    text = (resources.files("pipeline") / "specs" / "manifest.schema.json").read_text("utf-8")
    result: dict[str, Any] = json.loads(text)
    return result


@functools.cache
def _validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(schema())


def load_manifest(path: str | Path, *, check_files: bool = True) -> Manifest:
    """Load, validate and expand a manifest; raises ManifestError with every problem found."""
    shown = str(path)
    path = Path(path)
    try:
        loaded = load_file(path)
    except FileNotFoundError:
        raise ManifestError([Diagnostic(shown, 0, 0, "$", "manifest file not found")]) from None
    except OSError as exc:
        raise ManifestError(
            [Diagnostic(shown, 0, 0, "$", f"cannot read: {exc.strerror}")]
        ) from None
    except YamlProblem as exc:
        diag = Diagnostic(shown, exc.line, exc.column, format_path(exc.path), exc.message)
        raise ManifestError([diag]) from None
    with gc_paused():  # a matrix makes one job per cell (see pipeline.gcpause)
        return _Checker(shown, path.resolve(), loaded, check_files).run()


class _Checker:
    def __init__(self, shown: str, path: Path, loaded: LoadedYaml, check_files: bool) -> None:
        self.shown = shown
        self.path = path
        self.base = path.parent
        self.loaded = loaded
        self.check_files = check_files
        self.diags: list[Diagnostic] = []

    # ------------------------------------------------------------------ diagnostics

    def error(self, where: PathKey, message: str, hint: str = "", *, at_key: bool = False) -> None:
        mark = self.loaded.key_mark(where) if at_key else self.loaded.mark(where)
        self.diags.append(
            Diagnostic(self.shown, mark.line, mark.column, format_path(where), message, hint)
        )

    def run(self) -> Manifest:
        data = self.loaded.data
        if not isinstance(data, dict):
            self.error((), "the manifest must be a mapping (version, name, provider, jobs...)")
            raise ManifestError(self.diags)
        for err in _validator().iter_errors(data):
            report_schema_error(err, self.loaded, self.error)
        if self.diags:
            # Semantic checks assume the shape is right; report shape problems first.
            raise ManifestError(self.diags)
        manifest = self._build(data)
        if self.diags:
            raise ManifestError(self.diags)
        return manifest

    # ------------------------------------------------------------------ building

    def _build(self, data: dict[str, Any]) -> Manifest:
        provider_cls, config = self._provider(data["provider"])
        budget_doc = data.get("budget", {})
        budget = Budget(
            max_seconds=budget_doc.get("max_seconds"),
            max_cost=budget_doc.get("max_cost"),
            price_per_second=prices_for(budget_doc.get("price_per_second", {}), config.model),
            currency=budget_doc.get("currency", "USD"),
        )
        out = data.get("output_dir")
        output_dir = (self.base / out) if out else (self.base / "out" / data["name"])
        defaults = data.get("defaults", {})
        self._check_trim(defaults.get("trim"), ("defaults", "trim"))
        specs = list(self._job_specs(data, defaults))
        jobs = assign_ids(specs, config, self.error)
        storage = self._storage(data.get("storage"), data["name"])
        if not can_send_files(provider_cls, storage):
            for job in jobs:
                for role, ref in (("image", job.image), ("video", job.video)):
                    if not ref.is_url:
                        self.error(
                            self._spec_where(specs, job, role),
                            f"{config.name} has no upload API: {role} must be an http(s) URL",
                            "add a storage block (an S3-compatible bucket) to send local files, "
                            "host the file somewhere reachable, or use provider kie",
                        )
        self._check_prices(budget, jobs)
        self._check_price_models(budget_doc.get("price_per_second", {}), provider_cls)
        return Manifest(
            path=self.path,
            name=data["name"],
            output_dir=output_dir.resolve(),
            provider=config,
            budget=budget,
            jobs=tuple(jobs),
            storage=storage,
            callback=callback_config(data.get("callback"), provider_cls, self.error),
        )

    def _storage(self, doc: dict[str, Any] | None, name: str) -> StorageConfig | None:
        """The ``storage`` block with its defaults, checked where the schema cannot word it."""
        if doc is None:
            return None
        bucket = doc["bucket"]
        if not _BUCKET.fullmatch(bucket) or ".." in bucket or _IP_LIKE.fullmatch(bucket):
            self.error(
                ("storage", "bucket"),
                f"invalid bucket name {bucket!r}",
                "3-63 characters of a-z 0-9 . - starting and ending with a letter or digit",
            )
        prefix = doc.get("prefix", f"motion-pipeline/{name}/")
        if prefix.startswith("/") or any(seg in {".", ".."} for seg in prefix.split("/")[:-1]):
            self.error(
                ("storage", "prefix"),
                f"prefix {prefix!r} must be relative (no leading '/', no '.' or '..' segment)",
            )
        elif any(ord(c) < 32 or ord(c) == 127 for c in prefix) or "//" in prefix:
            self.error(("storage", "prefix"), f"prefix {prefix!r} has control characters or '//'")
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        endpoint = doc.get("endpoint_url")
        if isinstance(endpoint, str) and public_url(endpoint) != endpoint:
            self.error(
                ("storage", "endpoint_url"),
                f"endpoint_url carries credentials ({public_url(endpoint)} with user:password@)",
                "credentials come from the AWS chain: AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE",
            )
        if not s3_available():
            self.error(
                ("storage",),
                "storage kind s3 needs boto3, which is not installed",
                S3_EXTRA_HINT,
                at_key=True,
            )
        return StorageConfig(
            bucket=bucket,
            prefix=prefix,
            kind=doc["kind"],
            endpoint_url=endpoint.rstrip("/") if endpoint else None,
            region=doc.get("region"),
            url_expires=int(doc.get("url_expires", 3600)),
        )

    def _provider(
        self, doc: str | dict[str, Any]
    ) -> tuple[type[providers.Provider], ProviderConfig]:
        if isinstance(doc, str):
            doc = {"name": doc}
        cls = providers.get(doc["name"])
        model = doc.get("model", cls.default_model)
        if model not in cls.models:
            self.error(
                ("provider", "model"),
                f"unknown model {model!r} for provider {cls.name}",
                "known models: " + ", ".join(cls.models),
            )
        key_envs = dict(cls.key_envs)
        for role in list(key_envs):
            override = doc.get(f"{role}_env")
            if override:
                key_envs[role] = override
        for role in ("api_key", "access_key", "secret_key"):
            if f"{role}_env" in doc and role not in cls.key_envs:
                self.error(
                    ("provider", f"{role}_env"),
                    f"provider {cls.name} takes no {role}",
                    "its keys: " + (", ".join(f"{r}_env" for r in cls.key_envs) or "none"),
                    at_key=True,
                )
        for field_name in ("base_url", "upload_url"):
            url = doc.get(field_name)
            if isinstance(url, str) and public_url(url) != url:
                # httpx would send them as Basic auth over the provider's own Authorization
                # header; they would also end up wherever the URL is written down.
                self.error(
                    ("provider", field_name),
                    f"{field_name} carries credentials ({public_url(url)} with user:password@); "
                    "the provider's key goes in the Authorization header, so URL credentials "
                    "cannot be used",
                    "for a proxy that needs a password, set HTTPS_PROXY in the environment",
                )
        rate = doc.get("rate_limit")
        config = ProviderConfig(
            name=cls.name,
            model=model,
            base_url=doc.get("base_url", cls.default_base_url).rstrip("/"),
            upload_url=(doc.get("upload_url") or cls.default_upload_url or "").rstrip("/") or None,
            key_envs=key_envs,
            concurrency=doc.get("concurrency", DEFAULTS.concurrency),
            rate_limit=RateLimit(rate["requests"], float(rate["per_seconds"]))
            if rate
            else RateLimit(),
            poll_interval=float(doc.get("poll_interval", DEFAULTS.poll_interval)),
            task_timeout=float(doc.get("task_timeout", DEFAULTS.task_timeout)),
            options=dict(doc.get("options", {})),
        )
        return cls, config

    def _check_prices(self, budget: Budget, jobs: list[Job]) -> None:
        """``max_cost`` caps only if every job has a price: a missing one would count as free."""
        if budget.max_cost is None:
            return
        unpriced = sorted({job.settings.mode for job in jobs} - set(budget.price_per_second))
        if unpriced:
            self.error(
                ("budget", "max_cost"),
                f"max_cost needs a price for every mode the jobs use; no price for "
                f"{', '.join(unpriced)}",
                "add it to budget.price_per_second",
            )

    def _check_price_models(self, table: dict[str, Any], cls: type[providers.Provider]) -> None:
        """A price keyed by a name that is no model of the provider is a typo, not a price."""
        for key in sorted(set(table) - set(MODES) - set(cls.models)):
            self.error(
                ("budget", "price_per_second", key),
                f"{key!r} is neither a mode (std, pro) nor a model of provider {cls.name}",
                "models: " + ", ".join(cls.models),
                at_key=True,
            )

    def _check_trim(self, trim: dict[str, Any] | None, where: PathKey) -> None:
        if trim and trim.get("end") is not None and trim["end"] <= trim.get("start", 0):
            self.error(
                (*where, "end"),
                f"trim end {trim['end']} must be after start {trim.get('start', 0)}",
            )

    def _job_specs(self, data: dict[str, Any], defaults: dict[str, Any]) -> Iterator[Spec]:
        for i, entry in enumerate(data.get("jobs", [])):
            where: PathKey = ("jobs", i)
            self._check_trim(entry.get("trim"), (*where, "trim"))
            image = self._input(entry["image"], (*where, "image"), "image")
            video = self._input(entry["video"], (*where, "video"), "video")
            if image is None or video is None:
                continue
            values = {**defaults, **{k: entry[k] for k in SETTING_KEYS if k in entry}}
            line = self.loaded.mark(where).line
            yield Spec(where, entry.get("id"), image, video, settings_of(values), line)
        matrix = data.get("matrix")
        if not matrix:
            return
        line = self.loaded.key_mark(("matrix",)).line
        images = self._expand_inputs(matrix["image"], ("matrix", "image"), "image")
        videos = self._expand_inputs(matrix["video"], ("matrix", "video"), "video")
        axes = [k for k in SETTING_KEYS if k in matrix]
        for k in axes:
            if k == "trim":
                for j, trim in enumerate(matrix["trim"]):
                    self._check_trim(trim, ("matrix", "trim", j))
        # Settings per combination of the setting axes, not per cell: the cells of a 100 x 1,000
        # matrix share one. The order is the product's (image, video, then the axes).
        combos = [
            settings_of({**defaults, **dict(zip(axes, combo, strict=True))})
            for combo in itertools.product(*(matrix[k] for k in axes))
        ]
        cell: PathKey = ("matrix",)
        for image, video, settings in itertools.product(images, videos, combos):
            yield Spec(cell, None, image, video, settings, line)

    def _expand_inputs(self, entries: list[str], where: PathKey, role: str) -> list[InputRef]:
        refs: list[InputRef] = []
        for j, raw in enumerate(entries):
            if _SCHEME.match(raw) or not _GLOB_CHARS.search(raw):
                ref = self._input(raw, (*where, j), role)
                if ref is not None:
                    refs.append(ref)
                continue
            pattern = raw if Path(raw).is_absolute() else str(self.base / raw)
            matches = sorted(glob.glob(pattern, recursive=True))
            if not matches:
                self.error(
                    (*where, j),
                    f"glob {raw!r} matches no file",
                    "globs are relative to the manifest's folder",
                )
                continue
            for match in matches:
                ref = self._input(match, (*where, j), role, shown=match)
                if ref is not None:
                    refs.append(ref)
        return refs

    def _input(
        self, raw: str, where: PathKey, role: str, shown: str | None = None
    ) -> InputRef | None:
        scheme = _SCHEME.match(raw)
        if scheme and len(scheme.group(1)) > 1:  # "C:" is a drive letter, not a scheme
            if scheme.group(1).lower() not in {"http", "https"}:
                self.error(
                    where,
                    f"{role} URL scheme {scheme.group(1)!r} is not allowed",
                    "use http or https",
                )
                return None
            return InputRef(raw=raw, url=raw)
        path = Path(raw) if Path(raw).is_absolute() else self.base / raw
        if self.check_files:
            ok, why = regular_file(path)
            if not ok:
                self.error(where, f"{role} {shown or raw!r}: {why}")
                return None
        return InputRef(raw=raw, path=path.absolute())

    def _spec_where(self, specs: list[Spec], job: Job, role: str) -> PathKey:
        for spec in specs:
            if spec.image is job.image and spec.video is job.video:
                return (*spec.where, role) if spec.where != ("matrix",) else ("matrix", role)
        return (role,)
