"""The study's directions: one source, `hydra.sweeper.direction` when set, else the app's
`optimized_direction`; and the override that makes every trial follow them."""

from omegaconf import OmegaConf

from experiment.errors import SweepError

DIRECTIONS = ("maximize", "minimize")


def as_list(value) -> list:
    return [value] if isinstance(value, str) or value is None else list(value)


def app_value(config, key: str):
    """A top-level key of the app's config, resolved (the project's app takes its
    objective from the task: `${task.metric}`), as plain values; None if absent."""
    value = OmegaConf.select(config, key, default=None, throw_on_resolution_failure=False)
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value, resolve=True, enum_to_str=True)
    return value.value if hasattr(value, "value") and not isinstance(value, str) else value


def overridden(config, key: str) -> str | None:
    """The value given to `key` on the command line, if any."""
    for override in config.hydra.overrides.task:
        name, _, value = str(override).lstrip("+~").partition("=")
        if name == key:
            return value
    return None


def study_directions(direction, config) -> list[str]:
    """The study's directions from the sweeper's `direction` (None: unset) and the app's
    config; else minimize (as the official plugin). SweepError where they disagree."""
    app = {key: app_value(config, key) for key in ("optimized_direction", "optimized_metric")}
    given = direction if direction is not None else app.get("optimized_direction")
    given = "minimize" if given is None else given  # an empty list is refused, not replaced
    directions = as_list(given)
    if not directions or any(d not in DIRECTIONS for d in directions):
        raise SweepError(
            f"hydra.sweeper.direction={given}: use maximize or minimize, or a list of "
            "them (one per objective)"
        )
    on_command_line = overridden(config, "optimized_direction")
    disagree = as_list(app.get("optimized_direction")) != directions
    if direction is not None and on_command_line is not None and disagree:
        raise SweepError(
            f"hydra.sweeper.direction={given} and optimized_direction="
            f"{on_command_line} disagree. Set one of them: the sweeper's direction, "
            "when set, is what every trial's optimized_direction follows."
        )
    metrics = app.get("optimized_metric")
    if direction is not None and metrics is not None and len(as_list(metrics)) != len(directions):
        raise SweepError(
            f"hydra.sweeper.direction={given} gives {len(directions)} direction(s) for "
            f"optimized_metric={metrics}: give one direction per optimized metric."
        )
    return directions


def direction_overrides(direction, config, directions: list[str]) -> list[str]:
    """The override that makes every trial's `optimized_direction` follow
    `hydra.sweeper.direction` (none where the task has no such key, the direction was
    not set on the sweeper, or the command line gave the same already)."""
    if direction is None or "optimized_direction" not in config:
        return []
    if overridden(config, "optimized_direction") is not None:
        return []  # checked equal in study_directions
    value = directions[0] if len(directions) == 1 else "[" + ",".join(directions) + "]"
    return [f"optimized_direction={value}"]
