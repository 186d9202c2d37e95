"""`fieldhub ml`: the window loop's models and decisions (docs/ml.md).

`train` writes a new version into the data dir's model registry (it needs the `train` extra:
PyTorch), from the site's own manual window commands (continuing from the active version) or
from the synthetic policy; it never activates it. `models`, `activate`, `rollback` and
`decisions` go through the running fieldhub's API (an admin token to change what serves)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from fieldhub.cli.api_client import DEFAULT_URL, TokenOption, UrlOption, api_call
from fieldhub.cli.common import fail, settings_from
from fieldhub.cli.rules import parse_since
from fieldhub.clock import US_PER_S

app = typer.Typer(
    name="ml",
    help="The window loop: train, list, activate and roll back models; decisions (docs/ml.md).",
    no_args_is_help=True,
)

DataDirOption = Annotated[
    Path | None, typer.Option(help="fieldhub's data dir (its models/ and database)")
]


@app.command()
def train(
    synthetic: Annotated[
        bool,
        typer.Option(
            help="Train from scratch on the synthetic comfort policy instead of the site's own "
            "manual window commands"
        ),
    ] = False,
    since: Annotated[
        str, typer.Option(help="Manual commands from this long ago on, e.g. 30d")
    ] = "90d",
    examples: Annotated[int, typer.Option(help="--synthetic: how many examples")] = 20_000,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed, the same model")] = 17,
    epochs: Annotated[int | None, typer.Option(help="Training epochs")] = None,
    data_dir: DataDirOption = None,
    db: Annotated[str | None, typer.Option(help="Database URL (default: the data dir's)")] = None,
) -> None:
    """Train the next version of the window model into the registry (not activated)."""
    try:
        from fieldhub.ml import train as training
    except ImportError as exc:
        raise fail(
            f"training needs PyTorch ({exc}): install the train extra, "
            "pip install 'fieldhub[train]'"
        ) from None
    from fieldhub.errors import FieldhubError
    from fieldhub.ml.history import manual_examples, summary
    from fieldhub.ml.policy import synthetic_dataset
    from fieldhub.ml.registry import DEFAULT_MODEL_NAME, Registry
    from fieldhub.security.files import restrict_new_files
    from fieldhub.store.open import open_store

    restrict_new_files()  # the new version's files are fieldhub's alone, as the data dir's are
    settings = settings_from(data_dir=data_dir, db=db)
    registry = Registry(settings.model_registry)
    name = DEFAULT_MODEL_NAME
    parent = registry.active(name)
    now_us = time.time_ns() // 1000
    window: tuple[int, int] | None = None
    if synthetic:
        data = synthetic_dataset(examples, seed)
        parent_dir = None
        typer.echo(f"training from scratch on {len(data):,} synthetic examples (seed {seed})")
    else:
        if parent is None:
            raise fail("no active model to continue from: `fieldhub ml train --synthetic` first")
        window = (now_us - round(parse_since(since) * US_PER_S), now_us)

        async def collect() -> Any:
            store = open_store(settings.db_url)
            await store.open()
            try:
                return await manual_examples(store, start_us=window[0], end_us=window[1])
            finally:
                await store.close()

        found = asyncio.run(collect())
        typer.echo(f"manual window commands since {since}: {summary(found)}")
        if not found.examples:
            raise fail(
                "no manual window command to learn from: set windows by hand (dashboard, API, "
                "`fieldhub commands send`) where the model was wrong, then train again",
                1,
            )
        data = found.examples
        parent_dir = registry.version_dir(name, parent)
        typer.echo(f"continuing from version {parent}")
    version = registry.next_version(name)
    try:
        manifest = training.train(
            data,
            seed=seed,
            epochs=epochs or (training.DEFAULT_EPOCHS if synthetic else 20),
            parent_dir=parent_dir,
            out_dir=registry.version_dir(name, version),
            name=name,
            version=version,
            source="synthetic" if synthetic else "history",
            window=window,
        )
    except FieldhubError as exc:
        raise fail(exc.message, 1) from None
    metrics = manifest.metrics
    typer.echo(
        f"{name} version {version}: held-out MAE {metrics.mae:.2f} points, "
        f"{metrics.within_10:.0%} within 10 points"
    )
    for row in metrics.calibration:
        typer.echo(
            f"  confidence >= {row.c:.2f}: {row.n:>6} decisions, {row.within_10:.1%} within 10"
        )
    typer.echo(
        f"not active yet: `fieldhub ml activate {version}` (or the ML page) validates and serves it"
    )


def _print_models(answer: dict[str, Any]) -> None:
    for row in answer["versions"]:
        metrics = row["manifest"]["metrics"]
        marks = ("active" if row["active"] else "") + (
            " serving" if row["version"] == answer["serving"] else ""
        )
        typer.echo(
            f"v{row['version']:<4} {row['created']}  parent {row['parent'] or '-':<4} "
            f"MAE {metrics['mae']:.2f}  within 10 {metrics['within_10']:.0%}  {marks.strip()}"
        )


@app.command()
def models(url: UrlOption = DEFAULT_URL, token: TokenOption = None) -> None:
    """The window model's versions: metrics, which is active and serving."""
    _print_models(api_call(url, "/api/v1/ml/models", token))


@app.command()
def activate(
    version: Annotated[int, typer.Argument(help="The version to serve")],
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Validate a version (checksums, golden outputs) and serve it (admin)."""
    _print_models(api_call(url, f"/api/v1/ml/models/{version}/activate", token, "POST"))


@app.command()
def rollback(url: UrlOption = DEFAULT_URL, token: TokenOption = None) -> None:
    """Serve the version that was active before the active one (admin)."""
    _print_models(api_call(url, "/api/v1/ml/models/rollback", token, "POST"))


@app.command()
def decisions(
    device: Annotated[str | None, typer.Option(help="One device's decisions")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 20,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Recent decisions, newest first: trigger, outcome, position and the guard that stopped it."""
    query = f"?limit={limit}" + (f"&device={device}" if device else "")
    for row in api_call(url, f"/api/v1/ml/decisions{query}", token)["data"]:
        stopped = next((v for v in row["verdicts"] if not v["ok"]), None)
        position = "-" if row["position"] is None else f"{row['position']:.0f}"
        confidence = "-" if row["confidence"] is None else f"{row['confidence']:.2f}"
        typer.echo(
            f"{row['at']}  {row['device_id']:<20} {row['trigger']:<8} {row['outcome']:<9} "
            f"position {position:>3} confidence {confidence:>4} "
            + (f"[{stopped['guard']}: {stopped['detail']}]" if stopped else "")
        )
