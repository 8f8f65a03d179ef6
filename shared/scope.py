"""What the impact model is for: Soccar, on arenas of standard geometry.

The features measure everything against goals at y = ±5120 on a 8192 x 10240 pitch. Hoops (a
hoop on a shorter pitch), Dropshot (no goals: the floor breaks) and the Rocket Labs and
Throwback arenas (other shapes and goal mouths) do not have that geometry. Game modes played on
standard arenas change the game the features describe: Snow Day's puck, Heatseeker's ball that
homes on a goal, Rumble's and Spike Rush's items, odd balls (cube, beach ball...). Trained on
all of them, the model forecast Soccar worse (README, *The shipped model*). Replays outside the
scope are still parsed, featurized and scored, but the impact model is neither trained nor
evaluated on them, and their scores are flagged.

The arena is the replay header's ``MapName``, the mode comes from the replay's ball, game event
and mutator archetypes (``rlimpact_native.extract``'s ``map_name`` and ``mode_objects``). A
replay without them (old versions) is taken to be Soccar on a standard arena.
"""

from __future__ import annotations

SOCCAR = "soccar"
# Lower-cased prefixes of the map names of arenas with another geometry.
OTHER_GEOMETRY_PREFIXES = (
    "hoops",  # Dunk House (HoopsStadium_P), The Block (hoopsStreet_p)
    "shattershot",  # Dropshot: Core 707
    "labs_",  # Rocket Labs: Octagon, Double Goal, Underpass, Pillars...
    "throwbackstadium",  # Throwback Stadium: a larger pitch
    "ko_",  # Knockout arenas (no ball: the parser rejects them)
)
# (lower-cased part of an archetype name, mode), first match wins
MODE_MARKERS = (
    ("itemsmode", "rumble"),  # Rumble, Spike Rush and other item modes
    ("gameevent_items", "rumble"),
    ("basketball", "hoops"),
    ("breakout", "dropshot"),
    ("puck", "snow_day"),
    ("gameevent_hockey", "snow_day"),
    ("ball_god", "heatseeker"),
)
SOCCAR_BALLS = ("archetypes.ball.ball_default", "archetypes.ball.ball_trajectory")


def standard_arena(map_name: str | None) -> bool:
    """True for an arena of standard Soccar geometry (or an unknown one)."""
    return map_name is None or not map_name.lower().startswith(OTHER_GEOMETRY_PREFIXES)


def game_mode(mode_objects: list[str]) -> str:
    """``soccar``, or the mode that differs (``rumble``, ``hoops``, ``dropshot``, ``snow_day``,
    ``heatseeker``, ``other_ball``) from the replay's ball, game event and mutator archetypes."""
    names = [name.lower() for name in mode_objects]
    for marker, mode in MODE_MARKERS:
        if any(marker in name for name in names):
            return mode
    balls = [name for name in names if name.startswith("archetypes.ball.")]
    return SOCCAR if all(ball in SOCCAR_BALLS for ball in balls) else "other_ball"


def in_scope(map_name: str | None, mode: str | None) -> bool:
    """Soccar (or an unknown mode) on a standard arena: what the impact model is for."""
    return standard_arena(map_name) and mode in (None, SOCCAR)
